"""Writes the ResNet-20 reference for ref_resnet20.c: PyTorch's random initial weights (every
parameter and BN buffer, by state_dict name), a batch, and what PyTorch computes from them in
training mode: logits, mean cross-entropy, every parameter gradient, BN running statistics after
that forward, and the losses of ten plain SGD steps (lr 0.1, no momentum or weight decay) on the
same batch, in float32 and in float64.

Usage: /usr/bin/python3 ref_resnet20.py OUT.bin

OUT.bin: b"LTREF1\\0\\0", u32 count, then per tensor: u32 name length, name, u32 ndim,
i64 dims[ndim], float32 data (little-endian, row-major)."""
import copy
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

import torch_zoo

BATCH, STEPS, LR = 16, 10, 0.1

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch_zoo.ResNet(20)
# Non-trivial BN affine parameters and running stats, so that loading by name is really tested.
with torch.no_grad():
    for name, t in model.state_dict().items():
        if name.endswith("bn1.weight") or name.endswith("bn2.weight"):
            t.uniform_(0.5, 1.5)
        elif name.endswith(".bias") and "bn" in name:
            t.uniform_(-0.2, 0.2)
        elif name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            t.uniform_(-0.2, 0.2)

records = []


def put(name, t):
    # A copy: numpy() shares memory, and training updates these tensors in place afterwards.
    records.append((name, np.array(t.detach().cpu().numpy(), dtype=np.float32, copy=True)))


for name, t in model.state_dict().items():
    if not name.endswith("num_batches_tracked"):
        put(name, t)
x = torch.randn(BATCH, 3, 32, 32)
y = torch.randint(0, 10, (BATCH,))
put("input", x)
put("labels", y.float())

model.train()
logits = model(x)
loss = F.cross_entropy(logits, y)
loss.backward()
put("logits", logits)
put("loss", loss.reshape(1))
for name, p in model.named_parameters():
    put("grad." + name, p.grad)
for name, t in model.state_dict().items():
    if "running" in name:
        put("after1." + name, t)

# The same ten steps in float64 show how far float32 rounding alone moves this trajectory (at
# lr 0.1 on one batch, percent-level by step 5): the C test allows that spread.
model64 = copy.deepcopy(model).double()
model64.load_state_dict({k: torch.from_numpy(v).double() for k, v in records
                         if k in model64.state_dict()})
opt64 = torch.optim.SGD(model64.parameters(), lr=LR)
losses64 = []
for _ in range(STEPS):
    opt64.zero_grad()
    l = F.cross_entropy(model64(x.double()), y)
    l.backward()
    opt64.step()
    losses64.append(l.item())
put("sgd_losses_f64", torch.tensor(losses64))

losses = []
opt = torch.optim.SGD(model.parameters(), lr=LR)
opt.step()  # the first step uses the gradients above
losses.append(loss.item())
for _ in range(STEPS - 1):
    opt.zero_grad()
    l = F.cross_entropy(model(x), y)
    l.backward()
    opt.step()
    losses.append(l.item())
put("sgd_losses", torch.tensor(losses))

with open(sys.argv[1], "wb") as f:
    f.write(b"LTREF1\0\0")
    f.write(struct.pack("<I", len(records)))
    for name, a in records:
        nb = name.encode()
        f.write(struct.pack("<I", len(nb)) + nb)
        f.write(struct.pack("<I", a.ndim))
        f.write(struct.pack("<%dq" % a.ndim, *a.shape))
        f.write(a.astype("<f4").tobytes())
print("wrote %d tensors, loss %.6f, losses %s" % (len(records), loss.item(), losses))

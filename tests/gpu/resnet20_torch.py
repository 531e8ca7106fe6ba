"""PyTorch eager side of the GPU ResNet-20 benchmark: the model of tests/bench/resnet20.py on the
GPU, at the batch and step counts of gpu_bench_resnet20, printed as one JSON line with the same
keys. PyTorch's defaults are kept (cuDNN, TF32 convolutions allowed, no cudnn.benchmark), as a
user would run it; "tf32_conv" in the output records that setting.

    python3 resnet20_torch.py BATCH TRAIN_STEPS INFER_STEPS
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

# One model definition for both benchmarks: tests/bench/resnet20.py without its main() call.
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "bench", "resnet20.py")
ns = {}
with open(SRC) as f:
    exec(compile(f.read().replace("\nmain()\n", "\n"), SRC, "exec"), ns)
ResNet20 = ns["ResNet20"]


def timed(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    batch, train_steps, infer_steps = (int(a) for a in sys.argv[1:4])
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = ResNet20().to(dev)
    macs = 40551040  # per image, as lt_graph_macs counts it
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    last = [0.0]

    def train_step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        last[0] = loss.item()  # the loss comes back each step, as in gpu_bench_resnet20

    model.train()
    t_train = timed(train_step, train_steps)
    model.eval()
    with torch.no_grad():
        t_inf = timed(lambda: model(x), infer_steps)
    train_ips = train_steps * batch / t_train
    infer_ips = infer_steps * batch / t_inf
    print(json.dumps({"engine": "pytorch", "version": torch.__version__,
                      "device": torch.cuda.get_device_name(0), "batch": batch,
                      "tf32_conv": torch.backends.cudnn.allow_tf32,
                      "train_images_per_s": round(train_ips, 2),
                      "infer_images_per_s": round(infer_ips, 2),
                      "train_gflops": round(train_ips * 6 * macs / 1e9, 2),
                      "infer_gflops": round(infer_ips * 2 * macs / 1e9, 2),
                      "last_loss": round(last[0], 4)}))


main()

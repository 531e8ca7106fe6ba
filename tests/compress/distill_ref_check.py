"""Recomputes the engine's distillation loss and gradient (distill_ref_dump.c) in PyTorch:
alpha*T^2*kl_div(log_softmax(s/T), softmax(t/T), 'sum') + (1-alpha)*cross_entropy(s, y, 'sum'),
gradient by autograd of (loss * scale)."""
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

buf = open(sys.argv[1], "rb").read()
n, k, cases = struct.unpack_from("<3i", buf, 0)
off = 12
s = np.frombuffer(buf, "<f4", n * k, off).reshape(n, k); off += 4 * n * k
t = np.frombuffer(buf, "<f4", n * k, off).reshape(n, k); off += 4 * n * k
y = np.frombuffer(buf, "<i4", n, off); off += 4 * n
fail = 0
for c in range(cases):
    alpha, temp, scale, loss = struct.unpack_from("<4d", buf, off); off += 32
    (correct,) = struct.unpack_from("<q", buf, off); off += 8
    grad = np.frombuffer(buf, "<f4", n * k, off).reshape(n, k); off += 4 * n * k
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.int64)
    kd = F.kl_div(F.log_softmax(st / temp, 1), F.softmax(tt / temp, 1), reduction="sum")
    ref = alpha * temp * temp * kd + (1 - alpha) * F.cross_entropy(st, yt, reduction="sum")
    (ref * scale).backward()
    ref_correct = int((st.detach().argmax(1) == yt).sum())
    ref_grad = st.grad.numpy()
    rel = abs(loss - ref.item()) / max(1.0, abs(ref.item()))
    gerr = np.abs(grad - ref_grad).max() / max(1e-6, np.abs(ref_grad).max())
    ok = rel < 1e-9 and gerr < 1e-5 and correct == ref_correct
    print(f"alpha={alpha} T={temp} scale={scale:.4g}: loss {loss:.9g} torch {ref.item():.9g} "
          f"(rel {rel:.2e}); grad max rel err {gerr:.2e}; correct {correct}/{ref_correct} "
          f"{'ok' if ok else 'FAIL'}")
    fail |= not ok
sys.exit(1 if fail else 0)

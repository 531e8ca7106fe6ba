"""Checks engine_ref_fused's output (the fused BN+ReLU and Add+ReLU CPU kernels) against PyTorch
in float64: outputs, batch and running statistics, and the gradients of relu(bn(x)) and
relu(a + b).

    /usr/bin/python3 ref_fused.py FUSED.bin

Tolerance, elementwise: |lathe - torch| <= 1e-4 * max(1, rms(torch)) + 1e-4 * |torch|, as
tests/kernels/ref_check.py. A ReLU's gradient is undefined at 0: where the reference's
pre-activation lies within 1e-6 of 0 (float32 rounding decides the side), the reference takes
the side lathe took; at most 0.1% of the elements may be such ties.
"""
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
ATOL = RTOL = 1e-4
failures = 0


def read(path):
    buf = open(path, "rb").read()
    assert buf[:8] == b"LTFUSED1", "not an engine_ref_fused file"
    pos, out = 8, {}
    while True:
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if n == 0:
            return out
        name = buf[pos:pos + n].decode()
        pos += n
        (nd,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        dims = struct.unpack_from("<%dq" % nd, buf, pos)
        pos += 8 * nd
        cnt = int(np.prod(dims)) if nd else 1
        out[name] = np.frombuffer(buf, "<f4", cnt, pos).reshape(dims).astype(np.float64)
        pos += 4 * cnt


def check(what, got, want):
    global failures
    want = want.detach().numpy() if torch.is_tensor(want) else np.asarray(want)
    rms = float(np.sqrt(np.mean(want ** 2))) if want.size else 0.0
    err = np.abs(got - want)
    tol = ATOL * max(1.0, rms) + RTOL * np.abs(want)
    bad = int(np.sum(err > tol))
    status = "ok  " if bad == 0 else "FAIL"
    print(f"{status} {what:28s} max|diff| {err.max():.3g} (rms {rms:.3g})")
    if bad:
        failures += 1


def relu_grad_mask(pre, lathe_out):
    """1 where the ReLU passes the gradient; ties at 0 follow lathe's side."""
    global failures
    tie = np.abs(pre) < 1e-6
    if tie.sum() > max(1, pre.size // 1000):
        print(f"FAIL {tie.sum()} of {pre.size} pre-activations tie at 0")
        failures += 1
    return torch.tensor(np.where(tie, lathe_out > 0, pre > 0).astype(np.float64))


T = read(sys.argv[1])
cases = sorted({k.split(".")[0] for k in T})
for cs in cases:
    g = lambda n: T[cs + "." + n]
    if cs.startswith("bn"):
        n, c, h, w = (int(v) for v in g("shape"))
        x = torch.tensor(g("x"), requires_grad=True)
        gamma = torch.tensor(g("gamma"), requires_grad=True)
        beta = torch.tensor(g("beta"), requires_grad=True)
        rm, rv = torch.tensor(g("running_mean")), torch.tensor(g("running_var"))
        yi = F.relu(F.batch_norm(x, rm.clone(), rv.clone(), gamma, beta, False, 0.1, 1e-5))
        check(f"{cs} ({n},{c},{h},{w}) infer y", g("y_infer"), yi)
        rm_t, rv_t = rm.clone(), rv.clone()
        pre = F.batch_norm(x, rm_t, rv_t, gamma, beta, True, 0.1, 1e-5)
        check(f"{cs} train y", g("y"), F.relu(pre))
        xd = x.detach()
        mean = xd.mean(dim=(0, 2, 3))
        var = xd.var(dim=(0, 2, 3), unbiased=False)
        check(f"{cs} mean", g("mean"), mean)
        check(f"{cs} invstd", g("invstd"), 1.0 / torch.sqrt(var + 1e-5))
        check(f"{cs} running_mean", g("running_mean_after"), rm_t)
        check(f"{cs} running_var", g("running_var_after"), rv_t)
        mask = relu_grad_mask(pre.detach().numpy(), g("y"))
        dx, dg, db = torch.autograd.grad(pre, (x, gamma, beta), torch.tensor(g("dy")) * mask)
        check(f"{cs} dx", g("dx"), dx)
        check(f"{cs} dgamma", g("dgamma"), dg)
        check(f"{cs} dbeta", g("dbeta"), db)
    else:
        a = torch.tensor(g("a"), requires_grad=True)
        b = torch.tensor(g("b"), requires_grad=True)
        pre = a + b
        check(f"{cs} ({a.numel()}) y", g("y"), F.relu(pre))
        mask = relu_grad_mask(pre.detach().numpy(), g("y"))
        da, db = torch.autograd.grad(pre, (a, b), torch.tensor(g("dy")) * mask)
        check(f"{cs} da", g("da"), da)
        check(f"{cs} db (accumulated)", g("db"), db + torch.tensor(g("db_before")))
print("FAILED" if failures else "all fused kernels match PyTorch")
sys.exit(1 if failures else 0)

"""Recomputes every case written by kernels_ref_dump with PyTorch (autograd for gradients) and
compares: prints max abs / max rel error per tensor and fails beyond tolerance.

    /usr/bin/python3 ref_check.py CASES.bin

Tolerance, elementwise: |lathe - torch| <= ATOL * max(1, rms(torch)) + RTOL * |torch|, with
ATOL = RTOL = 1e-4 unless a case states its own. The absolute part scales with the tensor's RMS
because an element of a float32 sum of K terms carries rounding error of the size of the sum's
typical magnitude (conv weight gradients sum K = batch*oh*ow products), not of its own value,
which cancellation can make arbitrarily small. The reference itself runs in float64.
"""
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)  # the reference runs in double; lathe runs in float32
ATOL, RTOL = 1e-4, 1e-4


def read_cases(path):
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:4] == b"LTK1", "not a kernels_ref_dump file"
    pos = 4

    def u32():
        nonlocal pos
        v = struct.unpack_from("<I", buf, pos)[0]
        pos += 4
        return v

    def string(n):
        nonlocal pos
        s = buf[pos:pos + n].decode()
        pos += n
        return s

    while True:
        n = u32()
        if n == 0:
            return
        name = string(n)
        np_ = u32()
        params = list(struct.unpack_from("<%dd" % np_, buf, pos))
        pos += 8 * np_
        tensors = {}
        while True:
            n = u32()
            if n == 0:
                break
            tname = string(n)
            nd = u32()
            dims = struct.unpack_from("<%dq" % nd, buf, pos)
            pos += 8 * nd
            cnt = int(np.prod(dims)) if nd else 1
            arr = np.frombuffer(buf, dtype="<f4", count=cnt, offset=pos).reshape(dims)
            pos += 4 * cnt
            tensors[tname] = arr
        yield name, params, tensors


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def grads(out, dy, *inputs):
    """Gradients of sum(out * dy) with respect to inputs (None where an input is None)."""
    live = [i for i in inputs if i is not None]
    gs = torch.autograd.grad(out, live, grad_outputs=t(dy), allow_unused=True)
    it = iter(gs)
    return [next(it) if i is not None else None for i in inputs]


def case_conv(p, T):
    transpose, sh, sw, pt, pl, pb, pr, dh, dw, groups, oph, opw = [int(v) for v in p]
    x, w = t(T["x"], True), t(T["w"], True)
    b = t(T["b"], True) if "b" in T else None
    if not transpose:
        # asymmetric padding: pad explicitly (zeros), then an unpadded conv
        y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, (sh, sw), 0, (dh, dw), groups)
    else:
        # conv_transpose with pads p is the unpadded one cropped by p on each side
        full = F.conv_transpose2d(x, w, b, (sh, sw), 0, (oph, opw), groups, (dh, dw))
        H, W = full.shape[2], full.shape[3]
        y = full[:, :, pt:H - pb, pl:W - pr]
    gx, gw, gb = grads(y, T["dy"], x, w, b)
    out = {"y": y, "dx": gx, "dw": gw}
    if b is not None:
        out["db"] = gb
    return out, {}


def case_linear(p, T):
    x, w, b = t(T["x"], True), t(T["w"], True), t(T["b"], True)
    y = F.linear(x, w, b)
    gx, gw, gb = grads(y, T["dy"], x, w, b)
    return {"y": y, "dx": gx, "dw": gw, "db": gb}, {}


def case_bn(p, T):
    eps, mom = p
    x, g, b = t(T["x"], True), t(T["gamma"], True), t(T["beta"], True)
    rm, rv = t(T["rm0"]), t(T["rv0"])
    y_inf = F.batch_norm(x, rm.clone(), rv.clone(), g, b, False, mom, eps)
    y = F.batch_norm(x, rm, rv, g, b, True, mom, eps)
    gx, gg, gb = grads(y, T["dy"], x, g, b)
    dims = (0, 2, 3)
    mean = x.detach().mean(dims)
    var = x.detach().var(dims, unbiased=False)
    return ({"y": y, "y_infer": y_inf, "save_mean": mean, "save_invstd": 1.0 / torch.sqrt(var + eps),
             "running_mean": rm, "running_var": rv, "dx": gx, "dgamma": gg, "dbeta": gb}, {})


def case_act(name, p, T):
    x = t(T["x"], True)
    kind = name.split(":")[1]
    if kind == "relu":
        y = F.relu(x)
    elif kind == "leaky_relu":
        y = F.leaky_relu(x, p[0])
    elif kind == "sigmoid":
        y = torch.sigmoid(x)
    elif kind == "tanh":
        y = torch.tanh(x)
    elif kind == "clip":
        y = torch.clamp(x, p[0], p[1])
    (gx,) = grads(y, T["dy"], x)
    out = {"y": y, "dx": gx}
    if kind == "relu":
        out["dx_mask"] = gx
    return out, {}


def case_pool(p, T):
    avg, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, incl = [int(v) for v in p]
    x = t(T["x"], True)
    if avg:
        assert dh == 1 and dw == 1
        y = F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), bool(ceil_mode), bool(incl))
    else:
        y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bool(ceil_mode))
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_gap(p, T):
    x = t(T["x"], True)
    y = x.mean((2, 3), keepdim=True)
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_up(p, T):
    bilinear, ac = int(p[0]), int(p[1])
    x = t(T["x"], True)
    size = T["dy"].shape[2:]
    if bilinear:
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=bool(ac))
    else:
        y = F.interpolate(x, size=size, mode="nearest")
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_bin(p, T):
    a, b = t(T["a"], True), t(T["b"], True)
    op = int(p[0])
    y = [a + b, a - b, a * b, a / b][op]
    ga, gb = grads(y, T["dy"], a, b)
    return {"y": y, "da": ga, "db": gb}, {}


def case_concat(p, T):
    ins = [t(T["a%d" % i], True) for i in range(3)]
    y = torch.cat(ins, 1)
    gs = grads(y, T["dy"], *ins)
    return {"y": y, "d0": gs[0], "d1": gs[1], "d2": gs[2]}, {}


def case_slice(p, T):
    x = t(T["x"], True)
    # params: (start, stop, step) per dim; torch has no negative steps, so flip such an axis
    # and slice it forward
    y = x
    for d in range(3):
        start, stop, step = [int(v) for v in p[3 * d:3 * d + 3]]
        keep = (slice(None),) * d
        if step > 0:
            y = y[keep + (slice(start, stop, step),)]
        else:
            n = y.shape[d]
            y = y.flip(d)[keep + (slice(n - 1 - start, n - 1 - stop, -step),)]
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_pad(p, T):
    x = t(T["x"], True)
    begins, ends, value = p[0:3], p[3:6], p[6]
    flat = []
    for d in reversed(range(3)):  # F.pad lists the last dim first
        flat += [int(begins[d]), int(ends[d])]
    y = F.pad(x, flat, value=value)
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_transpose(p, T):
    return {"y": t(T["x"]).permute(*[int(v) for v in p])}, {}


def case_softmax(p, T):
    x = t(T["x"], True)
    y = torch.softmax(x, 1)
    (gx,) = grads(y, T["dy"], x)
    return {"y": y, "dx": gx}, {}


def case_xent(p, T):
    x = t(T["x"], True)
    lab = torch.tensor(T["labels"].astype(np.int64))
    loss = F.cross_entropy(x, lab, reduction="mean")
    (gx,) = torch.autograd.grad(loss, [x])
    correct = (x.argmax(1) == lab).sum().double()
    n = x.shape[0]
    return {"loss_correct": torch.stack([loss.detach() * n, correct]), "dx": gx}, {}


def case_mse_l1(name, p, T):
    pr, tg = t(T["p"], True), t(T["t"])
    scale = float(name.split("scale")[1])
    loss = F.mse_loss(pr, tg, reduction="sum") if name.startswith("mse") else F.l1_loss(pr, tg, reduction="sum")
    (gp,) = torch.autograd.grad(loss * scale, [pr])
    return {"loss": loss.detach().reshape(1), "dp": gp}, {"loss": (1e-4, 1e-5)}


def case_opt(p, T):
    adamw, lr, a, b, c, wd, nesterov = p
    w = torch.nn.Parameter(t(T["w0"]))
    if adamw:
        opt = torch.optim.AdamW([w], lr=lr, betas=(a, b), eps=c, weight_decay=wd)
    else:
        opt = torch.optim.SGD([w], lr=lr, momentum=a, dampening=b, weight_decay=wd, nesterov=bool(nesterov))
    for g in T["g"]:
        w.grad = t(g)
        opt.step()
    return {"w": w.detach()}, {}


DISPATCH = {
    "conv": case_conv, "convT": case_conv, "linear": case_linear, "bn": case_bn,
    "maxpool": case_pool, "avgpool": case_pool, "gap": case_gap, "up": case_up, "bin": case_bin,
    "concat": case_concat, "slice": case_slice, "pad": case_pad, "transpose": case_transpose,
    "softmax": case_softmax, "xent": case_xent, "sgd": case_opt, "adamw": case_opt,
}


def main():
    failures = 0
    ncases = 0
    for name, params, T in read_cases(sys.argv[1]):
        kind = name.split(":")[0]
        if kind == "act":
            ref, tol = case_act(name, params, T)
        elif kind in ("mse", "l1"):
            ref, tol = case_mse_l1(name, params, T)
        else:
            ref, tol = DISPATCH[kind](params, T)
        ncases += 1
        for key, want in ref.items():
            got = T[key].astype(np.float64)
            want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
            atol, rtol = tol.get(key, (ATOL, RTOL))
            if got.shape != want.shape:
                print("FAIL %-28s %-13s shape %s, torch %s" % (name, key, got.shape, want.shape))
                failures += 1
                continue
            err = np.abs(got - want)
            rel = err / np.maximum(np.abs(want), 1e-12)
            rms = float(np.sqrt(np.mean(want ** 2))) if want.size else 0.0
            bad = err > atol * max(1.0, rms) + rtol * np.abs(want)
            status = "FAIL" if bad.any() else "ok  "
            failures += int(bad.any())
            print("%s %-28s %-13s max abs %.3e  max rel %.3e  (atol %.0e rtol %.0e)"
                  % (status, name, key, err.max(initial=0), rel.max(initial=0), atol, rtol))
    print("%d cases, %d tensors failed" % (ncases, failures))
    return 1 if failures or ncases == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

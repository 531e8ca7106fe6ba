"""Replays ref_optim's optimizer trajectories and schedules with torch 1.13 and compares.

SGD and AdamW: same initial parameters, same gradients, same per-step learning rates; parameters
after every step must agree to rtol 1e-5 / atol 1e-6 (float32 arithmetic in a different order).
Schedules: the learning rate torch's scheduler sets before each optimizer step must agree to
rtol 1e-9 (torch's recursive forms and our closed forms differ only by rounding)."""
import json
import sys
import warnings

import torch

# SequentialLR passes an epoch to the next scheduler's step(), which torch 1.13 warns about.
warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")

data = json.load(sys.stdin)
failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL", msg)


for name, case in data["optim"].items():
    params = [torch.tensor(p, dtype=torch.float32) for p in case["p0"]]
    params[0] = params[0].reshape(7, 5)
    params = [torch.nn.Parameter(p) for p in params]
    if case["kind"] == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=case["momentum"],
                              dampening=case["dampening"], nesterov=bool(case["nesterov"]),
                              weight_decay=case["wd"])
    else:
        opt = torch.optim.AdamW(params, lr=0.1, betas=tuple(case["betas"]), eps=case["eps"],
                                weight_decay=case["wd"])
    worst, ok = 0.0, True
    for s, step in enumerate(case["steps"]):
        for group in opt.param_groups:
            group["lr"] = step["lr"]
        for p, g in zip(params, step["g"]):
            p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)
        opt.step()
        for p, want in zip(params, step["p"]):
            ours = torch.tensor(want, dtype=torch.float32).reshape(p.shape)
            err = (ours - p.detach()).abs()
            tol = 1e-6 + 1e-5 * p.detach().abs()
            worst = max(worst, float(err.max()))
            if bool((err > tol).any()):
                fail(f"optim {name} step {s}: max |diff| {float(err.max()):.3g}")
                ok = False
        if not ok:
            break
    if ok:
        print(f"ok   optim {name}: {len(case['steps'])} steps, max |diff| {worst:.3g}")


def torch_lrs(name, n):
    p = [torch.nn.Parameter(torch.zeros(1))]
    if name == "step":
        opt = torch.optim.SGD(p, lr=0.2)
        sch = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    elif name == "cosine":
        opt = torch.optim.SGD(p, lr=0.1)
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30, eta_min=0.001)
    elif name == "warmup_cosine":
        opt = torch.optim.SGD(p, lr=0.1)
        sch = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=25, eta_min=0.0)], milestones=[5])
    elif name == "warmup_step":
        opt = torch.optim.SGD(p, lr=0.1)
        sch = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4),
            torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)], milestones=[4])
    elif name == "onecycle":
        opt = torch.optim.SGD(p, lr=0.5)
        sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=40, pct_start=0.3,
                                                  cycle_momentum=False)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


for name, ours in data["sched"].items():
    ref = torch_lrs(name, len(ours))
    bad = [(t, a, b) for t, (a, b) in enumerate(zip(ours, ref)) if abs(a - b) > 1e-9 * max(1e-3, abs(b)) + 1e-12]
    if bad:
        t, a, b = bad[0]
        fail(f"schedule {name}: step {t}: ours {a!r}, torch {b!r} ({len(bad)} steps differ)")
    else:
        print(f"ok   schedule {name}: {len(ours)} steps")

print(f"{'FAILED' if failures else 'passed'}: {failures} failures")
sys.exit(1 if failures else 0)

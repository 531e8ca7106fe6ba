#!/usr/bin/python3
"""Summarises the loader benchmark's JSON lines: steady-state figures per configuration (the
epochs between the buffer-filling first and the last, which has nothing to prefetch) and the
issue's goals, each marked PASS or MISS."""
import collections
import json
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    groups = collections.OrderedDict()
    for r in rows:
        groups.setdefault((r["impl"], r.get("fraction", 0.0)), []).append(r)
    steady = {}
    for key, rs in groups.items():
        n = len(rs)
        mid = rs[1:n - 1] if n >= 3 else rs[-1:]
        avg = {k: sum(r[k] for r in mid) / len(mid) for k in
               ("samples_per_s", "storage_bytes", "storage_requests", "hit_rate", "stall_fraction",
                "p50_step_s", "p99_step_s", "batch_max_over_mean", "reads_max_over_mean", "epoch_s",
                "bound_s")
               if all(r.get(k) is not None for r in mid)}
        avg["dataset_bytes"] = mid[0]["dataset_bytes"]
        steady[key] = avg
    print("%-22s %5s %9s %9s %7s %6s %6s %8s %8s %7s %7s" % (
        "impl", "C/N", "samples/s", "MB/epoch", "reqs", "hit", "stall", "p50 s", "p99 s",
        "bmax/mn", "T/bound"))
    for (impl, frac), a in steady.items():
        print("%-22s %5.2f %9.1f %9.1f %7d %6.3f %6.3f %8.4f %8.4f %7.3f %7.3f" % (
            impl, frac, a["samples_per_s"], a["storage_bytes"] / 1e6, a["storage_requests"],
            a["hit_rate"], a.get("stall_fraction", float("nan")), a["p50_step_s"], a["p99_step_s"],
            a.get("batch_max_over_mean", 1.0), a["epoch_s"] / a["bound_s"] if a["bound_s"] else 0))
    base = {k: v for k, v in steady.items() if k[0].startswith("torch-") and "raw" not in k[0]}
    if not base:
        return
    best = max(base.values(), key=lambda a: a["samples_per_s"])
    default = steady.get(("torch-default-w2", 0.0), best)
    print("\ngoals (throttled runs):")
    for (impl, frac), a in steady.items():
        if impl != "lathe":
            continue
        h = a["hit_rate"]
        checks = [
            ("hit rate %.3f >= 0.95*C/N = %.3f" % (h, 0.95 * frac), h >= 0.95 * frac),
            ("storage %.1f MB <= 1.05*(1-h)*data = %.1f MB" % (
                a["storage_bytes"] / 1e6, 1.05 * (1 - h) * a["dataset_bytes"] / 1e6),
             a["storage_bytes"] <= 1.05 * (1 - h) * a["dataset_bytes"]),
            ("speedup over best PyTorch %.2fx >= 0.9/(1-h) = %.2fx (over default DataLoader %.2fx)" % (
                a["samples_per_s"] / best["samples_per_s"], 0.9 / (1 - h),
                a["samples_per_s"] / default["samples_per_s"]),
             a["samples_per_s"] / best["samples_per_s"] >= 0.9 / (1 - h)),
            # loading-bound, a step costs what its slowest rank reads: balance reads, not batch
            # sizes (hits cost almost nothing), so unequal local batches are intended here
            ("storage reads per rank max/mean %.3f <= 1.10 (local batch max/mean %.3f)" % (
                a["reads_max_over_mean"], a["batch_max_over_mean"]), a["reads_max_over_mean"] <= 1.10),
            ("epoch time %.3f s within 20%% of bound T %.3f s" % (a["epoch_s"], a["bound_s"]),
             a["epoch_s"] <= 1.2 * a["bound_s"]),
        ]
        for text, ok in checks:
            print("  C/N %.2f  %-4s %s" % (frac, "PASS" if ok else "MISS", text))


if __name__ == "__main__":
    main(sys.argv[1])

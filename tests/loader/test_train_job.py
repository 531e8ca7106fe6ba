#!/usr/bin/python3
"""The train job with a loader, end to end through `lathe run` under mpirun (issue 7):
schema/jobs/train-surrogate.example.json (its dataset swapped for a small gen-surrogate file)
trains over 2 ranks and its result carries the loader fields; bad inputs (inputs and targets of
different sample counts, a buffer fraction above 1, more ranks than samples) fail with a message
that names the problem, on every rank, within a timeout (a hang fails the test).

usage: test_train_job.py LATHE MPIEXEC [MPIEXEC FLAGS...]"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import h5py
    import numpy as np
except ImportError:
    print("h5py/numpy missing: skipped")
    sys.exit(77)

lathe, mpiexec, mpiflags = sys.argv[1], sys.argv[2], sys.argv[3:]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
work = tempfile.mkdtemp(prefix="lathe-train-job-")
failures = []
TIMEOUT = 90  # seconds per run: far above a normal run, so only a hang reaches it


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(np_, spec, name):
    """Runs a train job under mpirun -np np_; returns (exit code, events, stderr)."""
    job = os.path.join(work, name + ".json")
    with open(job, "w") as f:
        json.dump({"kind": "train", "spec": spec, "device": "cpu"}, f)
    cmd = [mpiexec, "-np", str(np_)] + mpiflags + ["-x", "OMP_WAIT_POLICY=passive", lathe, "run",
                                                   job, "--out", os.path.join(work, name)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, [], "timed out after %d s: some rank hangs" % TIMEOUT
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, events, p.stderr


def last_error(events):
    errs = [e for e in events if e.get("type") == "error"]
    return errs[-1]["message"] if errs else ""


try:
    with open(os.path.join(root, "schema/jobs/train-surrogate.example.json")) as f:
        example = json.load(f)["spec"]
    data = os.path.join(work, "surrogate.h5")
    gen = subprocess.run([lathe, "data", "gen-surrogate", "--out", data, "--samples", "96",
                          "--grid", "16", "--warmup", "200"], capture_output=True, text=True)
    check(gen.returncode == 0, "gen-surrogate writes the dataset: " + gen.stderr.strip())

    # end to end over 2 ranks
    spec = dict(example, dataset=data, batch_size=16, ranks=2)
    rc, events, err = run(2, spec, "ok")
    results = [e for e in events if e.get("type") == "result"]
    check(rc == 0 and len(results) == 1, "2-rank train job succeeds with one result event "
          "(rc %s, %d results) %s" % (rc, len(results), last_error(events) or err[-400:]))
    if results:
        res = results[0]["summary"]
        ld = res.get("loader", {})
        for key in ("hit_rate", "storage_bytes", "storage_requests", "stall_fraction",
                    "batch_imbalance"):
            check(isinstance(ld.get(key), (int, float)), "result.loader.%s = %s" % (key, ld.get(key)))
        check(ld.get("ranks") == 2, "result.loader.ranks is 2")
        check(0 < ld.get("hit_rate", 0) < 1, "static buffer of half the data gives 0 < hit rate < 1")
        check(ld.get("storage_bytes", 0) > 0 and ld.get("batch_imbalance", 0) >= 1,
              "storage bytes read and batch imbalance >= 1")
        eps = ld.get("epochs", [])
        check(len(eps) == spec["epochs"] and all(len(e["rank_batch_mean"]) == 2 for e in eps),
              "one loader entry per epoch with a batch size per rank")
        # each epoch's local batches add up to the global batch on average
        check(all(abs(sum(e["rank_batch_mean"]) - 96 / 6) < 1e-9 for e in eps),
              "per-rank mean batches add up to the global batch")
        check(res["steps"] == spec["epochs"] * 6, "steps = epochs x ceil(96 / 16)")
        keys = {e["key"] for e in events if e.get("type") == "metric"}
        check({"loader.hit_rate", "loader.storage_bytes", "loader.samples_per_s"} <= keys,
              "per-epoch loader metrics emitted")
    check(os.path.exists(os.path.join(work, "ok", "checkpoint.h5")), "rank 0 wrote the checkpoint")

    # inputs and targets with different sample counts
    bad = os.path.join(work, "mismatch.h5")
    with h5py.File(bad, "w") as f:
        f["train/x"] = np.zeros((20, 2, 16, 16), np.float32)
        f["train/y"] = np.zeros((19, 2, 16, 16), np.float32)
    spec = dict(example, dataset=bad, batch_size=4, splits={"val": ""}, ranks=2)
    rc, events, err = run(2, spec, "mismatch")
    msg = last_error(events)
    check(rc not in (0, None) and "have 20 samples but targets" in msg,
          "x/y sample counts differ: clear error, no hang (rc %s): %s" % (rc, msg or err[-300:]))

    # a buffer larger than the data
    spec = dict(example, dataset=data, loader=dict(example["loader"], buffer_fraction=1.5))
    rc, events, err = run(2, spec, "buffer")
    msg = last_error(events)
    check(rc == 2 and "$.spec.loader.buffer_fraction" in msg,
          "buffer_fraction 1.5 refused (rc %s): %s" % (rc, msg or err[-300:]))

    # more ranks than samples: asked by the spec, and given by the launcher
    tiny = os.path.join(work, "tiny.h5")
    with h5py.File(tiny, "w") as f:
        f["train/x"] = np.zeros((3, 2, 16, 16), np.float32)
        f["train/y"] = np.zeros((3, 2, 16, 16), np.float32)
    spec = dict(example, dataset=tiny, batch_size=2, splits={"val": ""}, ranks=4)
    rc, events, err = run(4, spec, "ranks_spec")
    msg = last_error(events)
    check(rc not in (0, None) and "exceeds the 3 samples" in msg,
          "spec ranks 4 > 3 samples: clear error, no hang (rc %s): %s" % (rc, msg or err[-300:]))
    spec["ranks"] = 1
    rc, events, err = run(4, spec, "ranks_world")
    msg = last_error(events)
    check(rc not in (0, None) and "more ranks (4) than samples (3)" in msg,
          "4 MPI ranks > 3 samples: clear error, no hang (rc %s): %s" % (rc, msg or err[-300:]))
finally:
    shutil.rmtree(work, ignore_errors=True)

print("%d failed" % len(failures))
sys.exit(1 if failures else 0)

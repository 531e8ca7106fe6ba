#!/usr/bin/python3
"""Loader payload checksums against h5py: files written by h5py itself (contiguous, chunked,
gzip-chunked; float32 inputs, int64 and float32 targets), read by the loader under each policy;
every delivered sample's CRC-32 must equal that of h5py's ds[i], every sample once per epoch."""
import os
import subprocess
import sys
import zlib

try:
    import h5py
    import numpy as np
except ImportError:
    print("h5py/numpy missing: skipped")
    sys.exit(77)

dump = sys.argv[1]
rng = np.random.default_rng(3)
cases = [
    ("contiguous", dict(), np.int64),
    ("chunked", dict(chunks=(7, 3, 9, 11)), np.float32),
    ("gzip", dict(chunks=(5, 3, 9, 11), compression="gzip", compression_opts=6), np.int64),
]
failures = 0
for name, kw, ytype in cases:
    path = "h5py_ref_%s.h5" % name
    n = 97
    x = rng.standard_normal((n, 3, 9, 11)).astype(np.float32)
    y = (np.arange(n) * 3 + 1).astype(ytype)
    with h5py.File(path, "w") as f:
        f.create_dataset("train/x", data=x, **kw)
        f.create_dataset("train/y", data=y, chunks=kw.get("chunks", (None,))[:1] if "chunks" in kw else None,
                         compression=kw.get("compression"))
    with h5py.File(path, "r") as f:
        want_x = [zlib.crc32(f["train/x"][i].tobytes()) for i in range(n)]
        want_y = [zlib.crc32(f["train/y"][i].tobytes()) for i in range(n)]
    for policy in ["static", "belady", "lru", "solar", "none"]:
        out = subprocess.run([dump, path, "/train/x", "/train/y", "3", "10", "0.4", policy],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print("FAIL %s/%s: %s" % (name, policy, out.stderr.strip()))
            failures += 1
            continue
        seen = {}
        bad = 0
        for line in out.stdout.split("\n"):
            if not line:
                continue
            e, i, cx, cy = map(int, line.split())
            seen[e] = seen.get(e, 0) + 1
            bad += cx != want_x[i] or cy != want_y[i]
        ok = bad == 0 and sorted(seen.values()) == [n, n, n]
        print("%s %s/%s: %d mismatches, per-epoch counts %s" % ("ok  " if ok else "FAIL", name, policy, bad, seen))
        failures += not ok
    os.remove(path)
print("%d failed" % failures)
sys.exit(1 if failures else 0)

#!/usr/bin/python3
"""PyTorch baselines for the loader benchmark: P rank processes, each with a DataLoader over h5py
reading its share of every global batch of the same permutation Lathe uses (dumped by
`loader_bench --dump-perm`). Run under the same LD_PRELOADed storage throttle as Lathe, with the
file's cached pages dropped before each epoch; prints one JSON line per epoch in Lathe's format.

  modes: default  Dataset[i] -> (x[i], y[i]), file opened lazily in each worker, --workers W
         sorted   one sorted fancy-index read per local batch (the tuned variant), no workers
"""
import argparse
import json
import multiprocessing as mp
import os
import time

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class Samples(Dataset):
    """One sample per item; the file is opened on first use, so each worker opens its own."""

    def __init__(self, path, n):
        self.path, self.n, self.f = path, n, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.f is None:
            self.f = h5py.File(self.path, "r")
        return torch.from_numpy(self.f["train/x"][i]), torch.from_numpy(self.f["train/y"][i])


class SortedBatches(Dataset):
    """One item per local batch, read with one sorted selection per dataset."""

    def __init__(self, path, batches):
        self.path, self.batches, self.f = path, batches, None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        if self.f is None:
            self.f = h5py.File(self.path, "r")
        idx = sorted(self.batches[k])
        return torch.from_numpy(self.f["train/x"][idx]), torch.from_numpy(self.f["train/y"][idx])


def local_batches(perm, batch, ranks, rank):
    """Rank r's share of each global batch: positions r, r+P, ... (equal split, as DDP does)."""
    return [list(map(int, perm[s:s + batch][rank::ranks])) for s in range(0, len(perm), batch)]


def rank_main(a, rank, n, start, done, q):
    for e in range(a.epochs):
        perm = np.fromfile(os.path.join(a.perm_dir, "perm_%d.u32" % e), dtype=np.uint32)
        batches = local_batches(perm, a.batch, a.ranks, rank)
        if a.mode == "sorted":
            dl = DataLoader(SortedBatches(a.file, batches), batch_size=None, num_workers=0)
        else:
            dl = DataLoader(Samples(a.file, n), batch_sampler=batches, num_workers=a.workers)
        start.wait()
        t0 = last = time.perf_counter()
        steps, sizes, wait = [], [], 0.0
        it = iter(dl)
        while True:
            t = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - t
            if a.compute_us > 0:
                time.sleep(a.compute_us * 1e-6 * x.shape[0])
            now = time.perf_counter()
            steps.append(now - last)
            sizes.append(x.shape[0])
            last = now
        q.put((rank, e, time.perf_counter() - t0, steps, sizes, wait))
        done.wait()


def counters(shm):
    if not shm or not os.path.exists(shm):
        return 0, 0
    c = np.fromfile(shm, dtype=np.int64)
    return int(c[2]), int(c[3])


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--file", required=True)
    p.add_argument("--perm-dir", required=True)
    p.add_argument("--mode", choices=["default", "sorted"], default="default")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--compute-us", type=float, default=0)
    p.add_argument("--bw", type=float, default=0)
    p.add_argument("--lat-us", type=float, default=0)
    a = p.parse_args()
    with h5py.File(a.file, "r") as f:
        n = f["train/x"].shape[0]
        sample_bytes = f["train/x"][0].nbytes + f["train/y"][0].nbytes
    shm = os.environ.get("LATHE_THROTTLE_SHM")
    torch.set_num_threads(1)
    ctx = mp.get_context("fork")
    start, done, q = ctx.Barrier(a.ranks + 1), ctx.Barrier(a.ranks + 1), ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(a, r, n, start, done, q)) for r in range(a.ranks)]
    for pr in procs:
        pr.start()
    label = "torch-%s" % (a.mode if a.mode == "sorted" else "default-w%d" % a.workers)
    readers = a.ranks * max(1, a.workers if a.mode == "default" else 1)
    for e in range(a.epochs):
        drop_cache(a.file)
        b0, r0 = counters(shm)
        start.wait()
        res = [q.get() for _ in range(a.ranks)]
        b1, r1 = counters(shm)
        done.wait()
        epoch_s = max(r[2] for r in res)
        steps = np.max(np.array([r[3] for r in res]), axis=0)
        storage_t = (b1 - b0) / a.bw + (r1 - r0) * a.lat_us * 1e-6 / readers if a.bw > 0 else 0
        bound = max(storage_t, a.compute_us * 1e-6 * n / a.ranks)
        print(json.dumps({
            "impl": label, "fraction": 0.0, "ranks": a.ranks, "epoch": e,
            "epoch_s": round(epoch_s, 4), "samples_per_s": round(n / epoch_s, 1),
            "storage_bytes": b1 - b0, "storage_requests": r1 - r0, "dataset_bytes": n * sample_bytes,
            "hit_rate": 0.0, "stall_fraction": round(sum(r[5] for r in res) / (epoch_s * a.ranks), 4),
            "p50_step_s": round(float(np.percentile(steps, 50)), 5),
            "p99_step_s": round(float(np.percentile(steps, 99)), 5),
            "batch_max_over_mean": 1.0, "bound_s": round(bound, 4)}), flush=True)
    for pr in procs:
        pr.join()


if __name__ == "__main__":
    main()

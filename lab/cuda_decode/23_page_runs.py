#!/usr/bin/env python3
"""Lab 23: how long must a sequence's runs of consecutive pages be for the decode kernel to read
a churned pool as fast as one in physical order? Each sequence's pages lie in runs of R
consecutive pages, the runs at random places of a pool twice the batch's size (2 GiB for the
bar shapes), every run's values checked against the float64 reference. Beside them: physical
order, the churned table of bench_cuda_decode.py, and cuDNN, in interleaved rounds.

usage: 23_page_runs.py LIB.so [--rounds R] [--reps N]
"""
import argparse
import os
import random
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402

RUNS = [1, 4, 8, 16, 32, 64, 128]


def runs_table(B, P, R, rng):
    """B sequences of P pages in runs of R consecutive pages at random run slots of a 2·B·P pool."""
    M = 2 * B * P
    slots = rng.sample(range(M // R), B * P // R)
    table = [[slots[(b * P + i) // R] * R + i % R for i in range(P)] for b in range(B)]
    return M, torch.tensor(table, dtype=torch.int32, device="cuda")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    lib = bcd.load(a.lib)
    gen = torch.Generator(device="cuda").manual_seed(23)
    print(torch.cuda.get_device_name(), "copy GB/s", round(bcd.copy_bandwidth(20)))
    for B, N in bcd.SHAPES:
        pool, table, k, v, q, qo, ref = bcd.decode_problem(B, N, gen)
        P = table.shape[1]
        tables = {"physical": (B * P, torch.arange(B * P, device="cuda", dtype=torch.int32).view(B, P)),
                  "churned": bcd.churned_table(B, P, random.Random(B * N))}
        for R in RUNS:
            tables[f"runs of {R}"] = runs_table(B, P, R, random.Random(R))
        cpool = None
        handles = {}
        out = torch.empty_like(qo)
        M = max(m for m, _ in tables.values())
        cpools = {}
        for name, (m, tb) in tables.items():
            cp = bcd.moved(pool, table, m, tb)
            d = bcd.Decode(lib, cp, tb.contiguous(), [0] * B, [N] * B, 1)
            out.fill_(float("nan"))
            d.run(qo, out)
            torch.cuda.synchronize()
            err = bcd.rel(out.transpose(1, 2), ref)
            print(f"{name}: err {err:.1e}" + ("" if err < 1e-2 else "  WRONG"))
            handles[name] = d
            cpools[name] = cp
        del pool
        times = {n: [] for n in handles}
        cud = []
        for _ in range(a.rounds):
            cud.append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), a.reps))
            for n, d in handles.items():
                times[n].append(bcd.time_us(lambda: d.run(qo, out), a.reps))
        print(f"## B={B} N={N} (pool {M} pages): cuDNN {statistics.median(cud):.1f} us ({min(cud):.1f}-{max(cud):.1f})")
        for n, ts in times.items():
            ratios = [c / t for c, t in zip(cud, ts)]
            print(f"{n:12s} {statistics.median(ts):7.1f} us ({min(ts):.1f}-{max(ts):.1f})  cuDNN/ours "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        del handles, cpools, cpool, k, v, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

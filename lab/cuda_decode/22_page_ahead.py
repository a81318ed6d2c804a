#!/usr/bin/env python3
"""Lab 22: does touching a page a few pages ahead (one L2 line of its K and V blocks, or a bulk
L2 prefetch of both blocks) make the decode kernel faster on scattered page layouts?

Needs the lab build of src/ (22_page_ahead.diff: ATTNKIT_LAB22="ahead,mode" read at each launch;
mode 1: prefetch.global.L2 of one line of K and of V of the page `ahead` entries on, mode 2:
cp.async.bulk.prefetch.L2 of the whole K and V blocks of this head on that page).
Times ours on four layouts (physical, interleaved, churned, random) for every setting, and
cuDNN, in interleaved rounds; prints the medians over rounds and the median per-round ratio.

usage: 22_page_ahead.py LIB.so [--rounds R] [--reps N]
"""
import argparse
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402

MODES = ["", "1,1", "2,1", "4,1", "8,1", "2,2", "4,2", "8,2"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    lib = bcd.load(a.lib)
    gen = torch.Generator(device="cuda").manual_seed(22)
    print(torch.cuda.get_device_name(), "copy GB/s", round(bcd.copy_bandwidth(20)))
    for B, N in bcd.SHAPES:
        pool, table, k, v, q, qo, ref = bcd.decode_problem(B, N, gen)
        layouts = bcd.layouts(pool, table, B, N)
        handles = {}
        out = torch.empty_like(qo)
        for lname, (pl, tb) in layouts.items():
            for m in MODES:
                os.environ["ATTNKIT_LAB22"] = m
                d = bcd.Decode(lib, pl, tb, [0] * B, [N] * B, 1)
                out.fill_(float("nan"))
                d.run(qo, out)
                torch.cuda.synchronize()
                err = bcd.rel(out.transpose(1, 2), ref)
                if not err < 1e-2:
                    print(f"WRONG {lname} mode {m!r}: err {err}")
                handles[(lname, m)] = d
        times = {key: [] for key in handles}
        cud = []
        for r in range(a.rounds):
            cud.append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), a.reps))
            for (lname, m), d in handles.items():
                os.environ["ATTNKIT_LAB22"] = m
                times[(lname, m)].append(bcd.time_us(lambda: d.run(qo, out), a.reps))
        os.environ["ATTNKIT_LAB22"] = ""
        print(f"## B={B} N={N}: cuDNN {statistics.median(cud):.1f} us (rounds {min(cud):.1f}-{max(cud):.1f})")
        print(f"{'layout':12s} {'mode':5s} {'median us':>9s} {'min':>7s} {'max':>7s} {'cudnn/ours':>10s} {'>=1.0':>6s}")
        for (lname, m), ts in times.items():
            ratios = [c / t for c, t in zip(cud, ts)]
            print(f"{lname:12s} {m or '-':5s} {statistics.median(ts):9.1f} {min(ts):7.1f} {max(ts):7.1f} "
                  f"{statistics.median(ratios):10.3f} {sum(x >= 1.0 for x in ratios):3d}/{len(ratios)}")
        del handles, pool, table, k, v, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

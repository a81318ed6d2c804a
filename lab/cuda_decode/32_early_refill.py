"""Lab cuda_decode 32: refill a stage as soon as its step has read it, not after the next block
has arrived.

Measured (H100, 2026-11-23, 32_early_refill_h100.log), µs, medians of 7-11 rounds:
  B = 4 × 65536, 1 CTA of 4 warps a multiprocessor: early refill over 2 stages 350.4-354.6
  physical, 357.0-360.8 churned, against main's late refill over 3 stages 355.3-358.6 and
  360.0-361.9 in the same rounds (5 runs). Early refill over 3 or 4 stages: 364-367.
  B = 32 × 8192 (8 warps a multiprocessor): early refill slower (359.8 against 356.2 physical);
  2-warp CTAs with early refill 350.4 physical but 360.2 churned (main 353.0 / 358.2).
  Promoted for the B = 4 launch (commit ee8154f): CudaDecodeTuning.early_refill.

    python3 lab/cuda_decode/32_early_refill.py [rounds] name=LIB.so[:w,st,ck,pf,hw,cap] ...

A name b4_... or b32_... times that entry at one batch size only.

Lab 31 showed the decode kernel 2.2 % (B = 32) and 3.4 % (B = 4) slower than a kernel that only
reads the pool in its launch shape, on every layout alike. Until now a step waited for its block,
then refilled the stage that the previous step had read: while a warp waited, one of its stages
sat empty. The variant issues the refill at the end of the step that read
the stage, so that all `stages` blocks are in flight while the warp waits (first as a build
that always did so, then as CudaDecodeTuning.early_refill). Each entry is a decode C API
library (main's or the variant's) with an optional forced tuning (CudaDecodeTuning: warps,
stages, chunk keys, L2 prefetch, head warps, CTAs per SM, early refill; 0 / -1 automatic),
timed on the
physical, interleaved and churned layouts of bench_cuda_decode.py beside cuDNN in alternating
rounds; a ratio is the median over rounds of that round's cuDNN time / ours. Every entry is
checked against the float64 reference on the churned layout.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402


def parse(arg):
    name, spec = arg.split("=", 1)
    path, _, tun = spec.partition(":")
    tuning = tuple(int(x) for x in tun.split(",")) if tun else (0, 0, 0, -1, -1, 0)
    return name, path, tuning


def main():
    rounds = int(sys.argv[1])
    entries = [parse(a) for a in sys.argv[2:]]
    libs = {path: bcd.load(path) for _, path, _ in entries}
    reps = 15
    gen = torch.Generator(device="cuda").manual_seed(32)
    print(f"# lab 32 on {torch.cuda.get_device_name()}, torch {torch.__version__}; copy "
          f"{bcd.copy_bandwidth(reps):.0f} GB/s; {rounds} rounds; µs")
    for (B, N) in bcd.SHAPES:
        pool, table, k, v, q, q_ours, ref = bcd.decode_problem(B, N, gen)
        out = torch.full_like(q_ours, float("nan"))
        layouts = bcd.layouts(pool, table, B, N)
        del layouts["random"]
        timed = {}
        for name, path, tun in entries:
            if name.startswith("b") and "_" in name and name.split("_")[0] != f"b{B}":
                continue  # b4_..., b32_...: an entry for one batch only
            for lay, (pl, tb) in layouts.items():
                try:
                    dec = bcd.Decode(libs[path], pl, tb, [0] * B, [N] * B, 1, *tun)
                except RuntimeError as e:
                    print(f"# B={B} {name}: {e}")
                    break
                if lay == "churned":
                    out.fill_(float("nan"))
                    dec.run(q_ours, out)
                    torch.cuda.synchronize()
                    err = bcd.rel(out.transpose(1, 2), ref)
                    nan = bool(torch.isnan(out).any().item())
                    print(f"# B={B} {name}: shape {dec.shape}, churned error {err:.1e}{' NaN' if nan else ''}"
                          f"{'' if err < 1e-2 and not nan else ' WRONG'}")
                timed[(name, lay)] = dec
        times = {"cudnn": [], **{key: [] for key in timed}}
        for _ in range(rounds):
            times["cudnn"].append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), reps))
            for key, dec in timed.items():
                times[key].append(bcd.time_us(lambda: dec.run(q_ours, out), reps))
        cud = times["cudnn"]
        med = statistics.median
        print(f"\nB = {B} × {N}: cuDNN {med(cud):.1f} ({min(cud):.1f}-{max(cud):.1f})")
        print("| entry | " + " | ".join(f"{lay} µs | cuDNN / ours" for lay in layouts) + " |")
        print("|---|" + "---|---|" * len(layouts))
        for name, _, _ in entries:
            if not any((name, lay) in times for lay in layouts):
                continue
            cells = []
            for lay in layouts:
                ts = times.get((name, lay))
                cells.append(f"{med(ts):.1f} | {med([c / t for c, t in zip(cud, ts)]):.3f}" if ts else "- | -")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("rounds:", {f"{key[0]} {key[1]}" if isinstance(key, tuple) else key: [round(t, 1) for t in ts]
                          for key, ts in times.items()})
        del pool, table, k, v, ref, layouts, timed
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Lab cuda_decode 31: how fast can any kernel read each page layout of the bar? A kernel that only
reads the pool (31_read_ceiling.cu, in the decode kernel's own split and launch shape) beside
cuDNN and ours, on the four layouts of bench_cuda_decode.py, in alternating rounds.

Measured (H100, 2026-11-23, 31_read_ceiling_h100.log), µs, median of 7 rounds:
  B = 32: read 348.4 physical, 347.3 interleaved, 351.7 churned, 355.0 random; ours 356.6, 355.4,
          359.3, 362.9; cuDNN 361.0 (cuDNN / read 1.016-1.040, read / ours 0.977-0.978).
  B = 4:  read 345.0, 347.0, 349.6, 354.0; ours 356.7, 357.6, 361.8, 367.7; cuDNN 365.0
          (cuDNN / read 1.032-1.058, read / ours 0.963-0.970).

    nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \\
      lab/cuda_decode/31_read_ceiling.cu -o lab31_read.so
    python3 lab/cuda_decode/31_read_ceiling.py <build>/bench/libattnkit_decode_capi.so lab31_read.so [rounds]

No kernel that reads K and V once can be faster than the read alone. If the read of a layout
takes as long as cuDNN takes on contiguous K and V, no decode kernel can beat cuDNN there by a
margin; if it is faster, the difference is what ours could still win. One round times every
entry once (cuDNN, then each layout's read and ours); a ratio is the median over rounds of that
round's ratio.
"""
import ctypes
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402


def main():
    lib = bcd.load(sys.argv[1])
    rd = ctypes.CDLL(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    reps = 15
    sink = torch.zeros(16, dtype=torch.int32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(31)
    print(f"# lab 31 on {torch.cuda.get_device_name()}, torch {torch.__version__}; copy "
          f"{bcd.copy_bandwidth(reps):.0f} GB/s; {rounds} rounds; µs")
    for (B, N) in bcd.SHAPES:
        pool, table, k, v, q, q_ours, ref = bcd.decode_problem(B, N, gen)
        out = torch.full_like(q_ours, float("nan"))
        P = table.shape[1]
        layouts = bcd.layouts(pool, table, B, N)
        entries = {}
        for name, (pl, tb) in layouts.items():
            dec = bcd.Decode(lib, pl, tb, [0] * B, [N] * B, 1)
            out.fill_(float("nan"))
            dec.run(q_ours, out)
            torch.cuda.synchronize()
            err = bcd.rel(out.transpose(1, 2), ref) if name in ("churned", "random") else None
            sh = dec.shape
            if sh["head_warps"]:
                raise SystemExit(f"{name}: the automatic shape takes heads as warps; the read kernel has the chunk split")
            args = (ctypes.c_void_p(pl.data_ptr()), ctypes.c_void_p(tb.data_ptr()), ctypes.c_void_p(sink.data_ptr()),
                    B, bcd.HKV, P, int(sh["chunk_blocks"]), int(sh["chunk_groups"]), int(sh["warps"]),
                    int(sh["stages"]), int(sh["l2_prefetch"]))

            def read(args=args):
                rc = rd.lab31_read(*args, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
                if rc:
                    raise RuntimeError(f"lab31_read: {rc}")

            read()
            torch.cuda.synchronize()
            entries[f"{name} read"] = read
            entries[f"{name} ours"] = (lambda d=dec: d.run(q_ours, out))
            print(f"# B={B}: {name}: shape {sh}" + (f", ours' error {err:.1e}" if err is not None else ""))
        times = {"cudnn": [], **{key: [] for key in entries}}
        for _ in range(rounds):
            times["cudnn"].append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), reps))
            for key, fn in entries.items():
                times[key].append(bcd.time_us(fn, reps))
        cud = times["cudnn"]
        print(f"\nB = {B} × {N}: cuDNN {statistics.median(cud):.1f} ({min(cud):.1f}-{max(cud):.1f})")
        print("| layout | read | ours | cuDNN / read | cuDNN / ours | read / ours |")
        print("|---|---|---|---|---|---|")
        for name in layouts:
            r, o = times[f"{name} read"], times[f"{name} ours"]
            med = statistics.median
            print(f"| {name} | {med(r):.1f} | {med(o):.1f} | {med([c / x for c, x in zip(cud, r)]):.3f} | "
                  f"{med([c / x for c, x in zip(cud, o)]):.3f} | {med([x / y for x, y in zip(r, o)]):.3f} |")
        print("rounds:", {key: [round(t, 1) for t in ts] for key, ts in times.items()})
        del pool, table, k, v, ref, layouts, entries
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

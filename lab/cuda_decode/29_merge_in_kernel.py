"""Lab cuda_decode 29: the last CTA of a sequence merges its partial results (no combine kernel),
against main's decode kernel, in one process.

Measured (H100, 2026-11-23): B = 4 365.7 µs physical, 369.1 churned, against main's 365.5 / 369.1;
1 × 256 in a CUDA graph 10.5 against 7.1 µs, 1 × 4096 17.7 against 10.5. Not promoted.

    python3 lab/cuda_decode/29_merge_in_kernel.py OLD.so NEW.so [rounds]

OLD.so and NEW.so: bench/libattnkit_decode_capi.so built before and after the change. Bar shapes:
cuDNN, old and new automatic launches on the physical-order and churned layouts of
bench_cuda_decode.py, alternating in rounds (a ratio is the median of the rounds' cuDNN / ours).
Small shapes: 16 calls captured in a CUDA graph (no launch gaps, no host time), µs per call,
beside torch's cuDNN backend captured the same way; every output checked against the float64
reference.
"""
import importlib.util
import os
import random
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "lab12", os.path.join(os.path.dirname(os.path.abspath(__file__)), "12_small_torch_graph.py"))
lab12 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab12)


def graph_us(fn):
    """µs per call of 16 calls captured in a CUDA graph (lab 12), median over 20 replays; relaxed
    capture, since run_decode checks its pointers (cudaPointerGetAttributes) on the host."""
    return lab12.graph_us(fn, reps=20, capture_error_mode="relaxed")


def main():
    libs = {"old": bcd.load(sys.argv[1]), "new": bcd.load(sys.argv[2])}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    reps = 15
    gen = torch.Generator(device="cuda").manual_seed(29)
    print(f"# lab cuda_decode 29 on {torch.cuda.get_device_name()}, torch {torch.__version__}; copy "
          f"{bcd.copy_bandwidth(reps):.0f} GB/s; {rounds} rounds")
    for (B, N) in bcd.SHAPES:
        pool, table, k, v, q, q_ours, ref = bcd.decode_problem(B, N, gen)
        out = torch.full_like(q_ours, float("nan"))
        P = table.shape[1]
        ptable = torch.arange(B * P, device="cuda", dtype=torch.int32).view(B, P).contiguous()
        ppool = bcd.moved(pool, table, B * P, ptable)
        M, ctable = bcd.churned_table(B, P, random.Random(B * N))
        cpool = bcd.moved(pool, table, M, ctable)
        del pool, table
        entries = {}
        for which, lib in libs.items():
            for layout, (pl, tb) in (("physical", (ppool, ptable)), ("churned", (cpool, ctable))):
                dec = bcd.Decode(lib, pl, tb, [0] * B, [N] * B, 1)
                out.fill_(float("nan"))
                dec.run(q_ours, out)
                torch.cuda.synchronize()
                err = bcd.rel(out.transpose(1, 2), ref)
                bad = err > 5e-3 or torch.isnan(out).any().item()
                entries[(which, layout)] = dict(dec=dec, err=err, bad=bad, times=[], ws=dec.ws_bytes)
        cudnn = []
        for _ in range(rounds):
            cudnn.append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), reps))
            for e in entries.values():
                e["times"].append(bcd.time_us(lambda: e["dec"].run(q_ours, out), reps))
        print(f"\n## B = {B} × {N}: cuDNN median {statistics.median(cudnn):.1f} µs "
              f"(rounds {min(cudnn):.1f}-{max(cudnn):.1f})")
        for (which, layout), e in entries.items():
            ratios = [c / t for c, t in zip(cudnn, e["times"])]
            print(f"{which:4} {layout:9} {statistics.median(e['times']):7.1f} µs  cuDNN/ours "
                  f"{statistics.median(ratios):.3f} ({sum(r >= 1.0 for r in ratios)} of {len(ratios)} rounds ≥ 1)"
                  f"  workspace {e['ws']} B  err {e['err']:.1e}{' WRONG' if e['bad'] else ''}")
        del entries, ppool, cpool, k, v
        torch.cuda.empty_cache()

    print("\n## small shapes, CUDA graph of 16 calls, µs per call (pages in random order)")
    for (B, N) in lab12.SMALL:
        pool, table, k, v, q, q_ours, ref = bcd.decode_problem(B, N, gen)
        row = [f"{B} × {N}:"]
        for which, lib in libs.items():
            dec = bcd.Decode(lib, pool, table, [0] * B, [N] * B, 1)
            out = torch.full_like(q_ours, float("nan"))
            us = graph_us(lambda: dec.run(q_ours, out))
            torch.cuda.synchronize()
            err = bcd.rel(out.transpose(1, 2), ref)
            row.append(f"{which} {us:6.2f} (err {err:.1e}{' WRONG' if err > 5e-3 else ''}, "
                       f"{dec.shape['ctas']} CTAs, {dec.shape['max_splits']} splits)")
        row.append(f"cuDNN {graph_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION)):6.2f}")
        print("  ".join(row))
        del pool, table, k, v


if __name__ == "__main__":
    main()

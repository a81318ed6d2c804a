"""Lab cuda_decode 27: launch shapes of the decode kernel at the bar's shapes, against cuDNN, in
alternating rounds.

Measured (H100, 2026-11-23): B = 4 automatic 358.2 µs physical, 365.0 churned; 8 warps a
multiprocessor 357.8-358.1 / 362.5-363.2; cuDNN 365.1. B = 32: nothing beat the automatic 353.3.

    python3 lab/cuda_decode/27_launch_shapes.py <build>/bench/libattnkit_decode_capi.so [rounds]

Lab 26 found that the pool itself reads as fast with the B = 4 launch's split (128 CTAs of 4
warps) as with the B = 32 one (348 µs in order), yet the decode kernel at B = 4 runs 360-368 µs
against 353-356 at B = 32. A warp at B = 4 streams 256 blocks where one at B = 32 streams 128 in
the same time, with one warp per scheduler instead of two: if a step's dependent instructions,
not the fetches, set its pace, more warps a multiprocessor (shorter chunks, more CTAs or CTAs of
8 warps) would help. This times forced launch shapes (CudaDecodeTuning through the bench's C
API) on the physical-order and churned layouts of bench_cuda_decode.py, each checked against the
float64 reference, beside cuDNN; one round times every entry once, and a ratio is the median
over rounds of that round's cuDNN time / ours.
"""
import os
import random
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_cuda_decode as bcd  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402

# (warps, stages, chunk keys, L2 prefetch, head_warps, CTAs per SM): 0 / -1 = automatic.
SHAPES = {
    4: [("auto", None),
        ("4w 2st cap2", (4, 2, 0, 0, 0, 2)),
        ("4w 2st pf256 cap2", (4, 2, 0, 256, 0, 2)),
        ("4w 3st pf256 cap2", (4, 3, 0, 256, 0, 2)),
        ("8w 2st cap1", (8, 2, 0, 0, 0, 1)),
        ("8w 2st pf256 cap1", (8, 2, 0, 256, 0, 1)),
        ("8w 3st pf256 cap1", (8, 3, 0, 256, 0, 1))],
    32: [("auto", None),
         ("2w 3st pf256 cap2", (2, 3, 0, 256, 0, 2)),
         ("2w 2st cap2", (2, 2, 0, 0, 0, 2)),
         ("4w heads 3st pf256 cap1", (4, 3, 0, 256, 1, 1)),
         ("4w 3st pf256 cap2", (4, 3, 0, 256, 0, 2))],
}


def run(lib, rounds, shapes, title, env=None):
    """Times every (name, tuning) of shapes[B] on both layouts beside cuDNN. env: names whose
    timing runs with an environment variable set (name -> variable)."""
    env = env or {}
    reps = 15
    gen = torch.Generator(device="cuda").manual_seed(27)
    print(f"# {title} on {torch.cuda.get_device_name()}, torch {torch.__version__}; copy "
          f"{bcd.copy_bandwidth(reps):.0f} GB/s; {rounds} rounds")
    for (B, N) in bcd.SHAPES:
        if B not in shapes:
            continue
        pool, table, k, v, q, q_ours, ref = bcd.decode_problem(B, N, gen)
        out = torch.full_like(q_ours, float("nan"))
        P = table.shape[1]
        # Physical order: the same values moved to pages in sequence order.
        ptable = torch.arange(B * P, device="cuda", dtype=torch.int32).view(B, P).contiguous()
        ppool = bcd.moved(pool, table, B * P, ptable)
        M, ctable = bcd.churned_table(B, P, random.Random(B * N))
        cpool = bcd.moved(pool, table, M, ctable)
        del pool, table
        entries = {}
        for name, t in shapes[B]:
            args = t if t else ()
            for layout, (pl, tb) in (("physical", (ppool, ptable)), ("churned", (cpool, ctable))):
                dec = bcd.Decode(lib, pl, tb, [0] * B, [N] * B, 1, *args)
                out.fill_(float("nan"))
                dec.run(q_ours, out)
                torch.cuda.synchronize()
                err = bcd.rel(out.transpose(1, 2), ref)
                ok = err < 5e-3 and not torch.isnan(out).any().item()
                sh = dec.shape
                entries[(name, layout)] = dict(dec=dec, err=err, ok=ok, times=[], env=env.get(name),
                                               desc=f"{sh['warps']}w {sh['stages']}st chunk {sh['chunk_blocks'] * 16} "
                                                    f"splits {sh['max_splits']} ctas {sh['ctas']} "
                                                    f"pf {sh['l2_prefetch']} hw {sh['head_warps']}")
        cudnn = []
        for _ in range(rounds):
            cudnn.append(bcd.time_us(lambda: bcd.torch_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), reps))
            for e in entries.values():
                if e["env"]:
                    os.environ[e["env"]] = "1"
                e["times"].append(bcd.time_us(lambda: e["dec"].run(q_ours, out), reps))
                if e["env"]:
                    del os.environ[e["env"]]
        print(f"\n## B = {B} × {N}: cuDNN median {statistics.median(cudnn):.1f} µs "
              f"(rounds {min(cudnn):.1f}-{max(cudnn):.1f})")
        print(f"{'shape':26} {'layout':9} {'launch':52} {'µs':>7} {'cuDNN/ours':>10} {'rounds ≥ 1':>10}  err")
        for (name, layout), e in entries.items():
            ratios = [c / t for c, t in zip(cudnn, e["times"])]
            print(f"{name:26} {layout:9} {e['desc']:52} {statistics.median(e['times']):7.1f} "
                  f"{statistics.median(ratios):10.3f} {sum(r >= 1.0 for r in ratios):>6} of {len(ratios)}  "
                  f"{e['err']:.1e}{'' if e['ok'] else ' WRONG'}")
        del entries, ppool, cpool, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    run(bcd.load(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 7, SHAPES, "lab cuda_decode 27")

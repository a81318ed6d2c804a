#!/usr/bin/env python3
"""Lab 08: backward variants of one build side by side (ATTNKIT_LAB_BWD selects the variant at
each launch), beside torch's flash backend, on bench_cuda.py's shapes (bf16, B·N = 32768,
H·D = 2048). Per shape and variant: forward, forward + backward, and the backward alone as
2.5·F / (t(f+b) − t(f)); same process, same tensors, interleaved rounds, medians.

usage: 08_bench_variants.py LIB.so variant [variant ...]   (variant: sm90, tma, sm80)

The ATTNKIT_LAB_BWD switch (sm90 = dQ by atomics, tma = dQ by TMA reduce-add, sm80 = the
mma.sync kernel) lived only in the lab build of commit 1e60fd7; the promoted code has none.
"""
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
sys.path.insert(0, os.environ.get("BENCH_DIR", ""))
from bench_cuda import Attnkit, time_ms, torch_sdpa  # noqa: E402


def main():
    lib, variants = sys.argv[1], sys.argv[2:]
    ak = Attnkit(lib)
    reps = int(os.environ.get("REPS", "15"))
    print(f"# lab 08 variants on {torch.cuda.get_device_name()}: TFLOP/s (bwd = backward alone)")
    head = "| N | D | causal | flash f+b | flash bwd |" + "".join(f" {v} f+b | {v} bwd |" for v in variants)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for N in (4096, 16384):
        for D in (64, 128):
            for causal in (False, True):
                B, H = 32768 // N, 2048 // D
                torch.manual_seed(N + D)
                q, k, v, do = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
                o = torch.empty_like(q)
                lse = torch.empty(B, H, N, device="cuda")
                dq, dk, dv = (torch.empty_like(q) for _ in range(3))
                F = 4 * B * H * N * N * D / (2 if causal else 1)
                res = {}

                def fb_ours():
                    ak.fwd(q, k, v, o, lse, causal)
                    ak.bwd(q, k, v, o, do, lse, dq, dk, dv, causal)

                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                def fb_flash():
                    out = torch_sdpa(qg, kg, vg, causal, SDPBackend.FLASH_ATTENTION)
                    torch.autograd.grad(out, (qg, kg, vg), do)

                tf = {"ours": [], "flash": []}
                tfb = {x: [] for x in variants + ["flash"]}
                for _ in range(3):  # interleaved rounds
                    tf["ours"].append(time_ms(lambda: ak.fwd(q, k, v, o, lse, causal), reps))
                    tf["flash"].append(time_ms(lambda: torch_sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION), reps))
                    tfb["flash"].append(time_ms(fb_flash, reps))
                    for var in variants:
                        os.environ["ATTNKIT_LAB_BWD"] = var
                        tfb[var].append(time_ms(fb_ours, reps))
                os.environ.pop("ATTNKIT_LAB_BWD", None)
                med = lambda xs: statistics.median(xs)
                row = f"| {N} | {D} | {'yes' if causal else 'no'} |"
                row += f" {3.5 * F / med(tfb['flash']) / 1e9:.0f} | {2.5 * F / (med(tfb['flash']) - med(tf['flash'])) / 1e9:.0f} |"
                for var in variants:
                    row += f" {3.5 * F / med(tfb[var]) / 1e9:.0f} | {2.5 * F / (med(tfb[var]) - med(tf['ours'])) / 1e9:.0f} |"
                print(row, flush=True)
                del q, k, v, do, o, dq, dk, dv, qg, kg, vg
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Lab cuda_decode 12: torch SDPA's device time per decode call at small batches and short
contexts, without its host overhead: 16 calls captured in a CUDA graph, the graph replayed
between two events (median of 30). bf16, 32 query / 8 KV heads, D 128, one query token,
contiguous [B, H, N, D] K and V, enable_gqa=True. Compare with lab 11's device µs per call of
run_decode (C++, back to back).

usage: python3 lab/cuda_decode/12_small_torch_graph.py
"""
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D = 32, 8, 128
SMALL = [(1, 256), (1, 4096), (8, 2048), (32, 256), (32, 1024)]


def graph_us(fn, calls=16, reps=30, capture_error_mode="global"):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode=capture_error_mode):
        for _ in range(calls):
            fn()
    for _ in range(3):
        g.replay()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(ts)


def main():
    gen = torch.Generator(device="cuda").manual_seed(5)
    print(f"# lab cuda_decode 12: torch {torch.__version__} SDPA device µs per decode call (CUDA graph of 16 calls), "
          f"{torch.cuda.get_device_name()}")
    print("| B × N | cuDNN µs | flash µs |")
    print("|---|---|---|")
    for B, N in SMALL:
        q = torch.randn(B, HQ, 1, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(B, HKV, N, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(B, HKV, N, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        row = []
        for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            def call(be=be):
                with sdpa_kernel([be]):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            try:
                row.append(f"{graph_us(call):.1f}")
            except RuntimeError as e:
                row.append("failed: " + str(e).splitlines()[0][:80])
        print(f"| {B} × {N} | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 6's long-sequence bar: N = 131072, B = 1, H = 16, D = 128, causal, bf16, forward and
backward, with the extra device memory beyond inputs, outputs and gradients (bar: < 1 GiB).

    python3 bench/bench_cuda_long.py build/release/bench/libattnkit_cuda_capi.so

Extra memory = the backward workspace (queried, passed in) + the LSE output + anything the
library allocated on its own, seen as the drop in the device's free memory (cudaMemGetInfo)
beyond what torch holds. Also checks the output and gradients against torch's flash backend
on the same tensors and prints both times.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_cuda import Attnkit  # noqa: E402


def rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def main():
    ak = Attnkit(sys.argv[1])
    B, N, H, D = 1, 131072, 16, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda: torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v, do = mk(), mk(), mk(), mk()
    o, dq, dk, dv = (torch.empty_like(q) for _ in range(4))
    lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info()
    held0 = torch.cuda.memory_reserved()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    ak.fwd(q, k, v, o, lse, True)
    ak.bwd(q, k, v, o, do, lse, dq, dk, dv, True)
    end.record()
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info()
    ws = ak.ws.numel() if ak.ws is not None else 0
    outside_torch = (free0 - free1) - (torch.cuda.memory_reserved() - held0)
    extra = ws + lse.numel() * 4 + max(0, outside_torch)
    io = 8 * q.numel() * 2
    print(f"N={N} B={B} H={H} D={D} causal bf16: inputs+outputs+gradients {io / 2**30:.2f} GiB; "
          f"workspace {ws / 2**20:.1f} MiB, LSE {lse.numel() * 4 / 2**20:.1f} MiB, allocated outside torch "
          f"{outside_torch / 2**20:.1f} MiB; extra {extra / 2**20:.1f} MiB (bar: < 1024 MiB) "
          f"{'met' if extra < 2**30 else 'NOT met'}")
    print(f"attnkit forward + backward: {start.elapsed_time(end):.1f} ms (first call)")
    # The same math in torch's flash backend, as a check of the values.
    qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        start.record()
        ot = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        ot.backward(do.transpose(1, 2))
        end.record()
    torch.cuda.synchronize()
    print(f"torch flash forward + backward: {start.elapsed_time(end):.1f} ms (first call)")
    errs = [rel(o, ot.transpose(1, 2)), rel(dq, qt.grad.transpose(1, 2)), rel(dk, kt.grad.transpose(1, 2)),
            rel(dv, vt.grad.transpose(1, 2))]
    print("relative difference to torch flash (out, dq, dk, dv): " + " ".join(f"{e:.1e}" for e in errs))
    bad = any(e > 2e-2 or e != e for e in errs) or extra >= 2**30
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

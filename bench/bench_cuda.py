#!/usr/bin/env python3
"""attnkit's CUDA flash attention beside torch's SDPA (flash and cuDNN backends), one process,
the same device tensors. Two parts:

  accuracy  ours, torch flash and torch math (bf16/f16) against a float64 torch reference:
            ‖x − ref‖ / ‖ref‖ for out, dq, dk, dv; ours must be < 1e-2 and <= 2x torch math's.
  speed     B·N = 32768 tokens, H·D = 2048, N in {4096, 16384}, D in {64, 128}, causal or not:
            median of CUDA-event timings; TFLOP/s = 4·B·H·N²·D (halved when causal) forward,
            3.5x that for forward + backward (backward = 2.5x forward).

usage: bench_cuda.py LIB.so [--json out.json] [--reps N]
"""
import argparse
import ctypes
import datetime
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


class Attnkit:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.err = ctypes.create_string_buffer(1024)
        self.lib.ak_bwd_workspace_bytes.restype = ctypes.c_longlong
        self.ws = None

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(self.err.value.decode())

    def fwd(self, q, k, v, o, lse, causal):
        B, Nq, Hq, D = q.shape
        Nk, Hkv = k.shape[1], k.shape[2]
        p = lambda t: ctypes.c_void_p(t.data_ptr())
        s = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._check(self.lib.ak_fwd(p(q), p(k), p(v), p(o), p(lse), B, Nq, Nk, Hq, Hkv, D,
                                    int(q.dtype == torch.float16), int(causal), s, self.err, 1024))

    def bwd(self, q, k, v, o, do, lse, dq, dk, dv, causal):
        B, Nq, Hq, D = q.shape
        Nk, Hkv = k.shape[1], k.shape[2]
        need = self.lib.ak_bwd_workspace_bytes(B, Nq, Hq, D)
        if self.ws is None or self.ws.numel() < need:
            self.ws = torch.empty(need, dtype=torch.uint8, device="cuda")
        p = lambda t: ctypes.c_void_p(t.data_ptr())
        s = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._check(self.lib.ak_bwd(p(q), p(k), p(v), p(o), p(do), p(lse), p(dq), p(dk), p(dv), B, Nq, Nk, Hq,
                                    Hkv, D, int(q.dtype == torch.float16), int(causal), p(self.ws),
                                    ctypes.c_longlong(need), s, self.err, 1024))


def torch_sdpa(q, k, v, causal, backend, bottom_right=False):
    """q, k, v in BSHD; torch takes BHSD views of the same memory. torch's is_causal is
    top-left aligned; attnkit's causal is bottom-right, so Nq != Nk passes an explicit mask
    (which only the math backend takes)."""
    mask = None
    if causal and bottom_right:
        Nq, Nk = q.shape[1], k.shape[1]
        i = torch.arange(Nq, device=q.device)[:, None]
        mask = torch.arange(Nk, device=q.device)[None, :] <= i + (Nk - Nq)
        causal = False
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           is_causal=causal, enable_gqa=q.shape[2] != k.shape[2])
    return o.transpose(1, 2)


def ref_attention(q, k, v, causal):
    """float64 reference, bottom-right causal, GQA; q, k, v BSHD float64."""
    Nq, Nk, Hq, Hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh = kh.repeat_interleave(Hq // Hkv, dim=1)
    vh = vh.repeat_interleave(Hq // Hkv, dim=1)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        i = torch.arange(Nq, device=q.device)[:, None]
        j = torch.arange(Nk, device=q.device)[None, :]
        s = s.masked_fill(j > i + (Nk - Nq), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ vh).transpose(1, 2)


def rel(x, ref):
    x = x.double()
    return ((x - ref).norm() / ref.norm()).item()


def accuracy(ak, dtype):
    rows = []
    shapes = [  # (B, Nq, Nk, Hq, Hkv, D, causal)
        (2, 1000, 1000, 4, 4, 64, False), (2, 1000, 1000, 4, 4, 64, True), (1, 777, 1531, 8, 2, 128, True),
        (1, 1531, 777, 8, 8, 128, True), (2, 513, 513, 4, 1, 128, False), (1, 600, 900, 4, 2, 256, True)]
    for (B, Nq, Nk, Hq, Hkv, D, causal) in shapes:
        torch.manual_seed(B * Nq + Nk + D)
        q = torch.randn(B, Nq, Hq, D, device="cuda", dtype=dtype)
        k = torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dtype)
        v = torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dtype)
        do = torch.randn(B, Nq, Hq, D, device="cuda", dtype=dtype)
        q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
        o64 = ref_attention(q64, k64, v64, causal)
        g64 = torch.autograd.grad(o64, (q64, k64, v64), do.double())
        # ours, outputs poisoned first
        o = torch.full_like(q, float("nan"))
        lse = torch.full((B, Hq, Nq), float("nan"), device="cuda")
        ak.fwd(q, k, v, o, lse, causal)
        dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
        ak.bwd(q, k, v, o, do, lse, dq, dk, dv, causal)
        torch.cuda.synchronize()
        ours = [rel(o, o64)] + [rel(g, r) for g, r in zip((dq, dk, dv), g64)]
        peer = {}
        for name, be in (("math", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
                ot = torch_sdpa(qt, kt, vt, causal, be, bottom_right=Nq != Nk)
                gt = torch.autograd.grad(ot, (qt, kt, vt), do)
                # torch's math backend gives NaN on rows that see no key; attnkit gives 0
                peer[name] = [rel(ot.nan_to_num(0.0), o64)] + [rel(g.nan_to_num(0.0), r) for g, r in zip(gt, g64)]
            except RuntimeError:
                peer[name] = None
        math_err = peer["math"]
        ok = all(e < 1e-2 for e in ours) and all(not math.isnan(e) for e in ours)
        if math_err:
            ok = ok and all(e <= 2 * m for e, m in zip(ours, math_err))
        rows.append(dict(dtype=str(dtype).split(".")[-1], shape=f"B{B} Nq{Nq} Nk{Nk} Hq{Hq} Hkv{Hkv} D{D}"
                         + (" causal" if causal else ""), ours=ours, torch_math=math_err,
                         torch_flash=peer["flash"], ok=ok))
    return rows


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def speed(ak, reps):
    rows = []
    for N in (4096, 16384):
        for D in (64, 128):
            for causal in (False, True):
                B, H = 32768 // N, 2048 // D
                torch.manual_seed(N + D)
                q, k, v, do = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
                o = torch.empty_like(q)
                lse = torch.empty(B, H, N, device="cuda")
                dq, dk, dv = (torch.empty_like(q) for _ in range(3))
                fwd_flops = 4 * B * H * N * N * D / (2 if causal else 1)
                r = dict(N=N, D=D, B=B, H=H, causal=causal)

                def ours_f():
                    ak.fwd(q, k, v, o, lse, causal)

                def ours_fb():
                    ak.fwd(q, k, v, o, lse, causal)
                    ak.bwd(q, k, v, o, do, lse, dq, dk, dv, causal)

                r["ours_fwd"] = fwd_flops / time_ms(ours_f, reps) / 1e9
                r["ours_fwdbwd"] = 3.5 * fwd_flops / time_ms(ours_fb, reps) / 1e9
                for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                    try:
                        r[f"{name}_fwd"] = fwd_flops / time_ms(lambda: torch_sdpa(q, k, v, causal, be), reps) / 1e9

                        def fb():
                            out = torch_sdpa(qg, kg, vg, causal, be)
                            torch.autograd.grad(out, (qg, kg, vg), do)

                        r[f"{name}_fwdbwd"] = 3.5 * fwd_flops / time_ms(fb, reps) / 1e9
                    except RuntimeError as e:
                        print(f"torch {name} N={N} D={D}: {e}", file=sys.stderr)
                        r[f"{name}_fwd"] = r[f"{name}_fwdbwd"] = float("nan")
                rows.append(r)
                del q, k, v, do, o, dq, dk, dv
                torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--json")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    ak = Attnkit(args.lib)
    gpu = torch.cuda.get_device_name()
    acc = accuracy(ak, torch.bfloat16) + accuracy(ak, torch.float16)
    spd = speed(ak, args.reps)
    date = datetime.date.today().isoformat()
    print(f"\n# attnkit CUDA vs torch {torch.__version__} SDPA on {gpu}, {date}")
    print("\n## accuracy: ‖x − ref‖/‖ref‖ vs float64 (out, dq, dk, dv); ok = all < 1e-2 and <= 2x torch math")
    print(f"| dtype | shape | ours | torch math | torch flash | ok |\n|---|---|---|---|---|---|")
    fmt = lambda e: "n/a" if e is None else " ".join(f"{x:.1e}" for x in e)
    for r in acc:
        print(f"| {r['dtype']} | {r['shape']} | {fmt(r['ours'])} | {fmt(r['torch_math'])} | "
              f"{fmt(r['torch_flash'])} | {'yes' if r['ok'] else 'NO'} |")
    print("\n## speed, bf16, TFLOP/s (B·N = 32768, H·D = 2048; median of CUDA-event timings)")
    print("| N | D | causal | ours fwd | flash fwd | cuDNN fwd | ours/cuDNN | ours/flash | "
          "ours f+b | flash f+b | cuDNN f+b | ours/flash f+b |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in spd:
        print(f"| {r['N']} | {r['D']} | {'yes' if r['causal'] else 'no'} | {r['ours_fwd']:.0f} | "
              f"{r['flash_fwd']:.0f} | {r['cudnn_fwd']:.0f} | {r['ours_fwd'] / r['cudnn_fwd']:.2f} | "
              f"{r['ours_fwd'] / r['flash_fwd']:.2f} | {r['ours_fwdbwd']:.0f} | {r['flash_fwdbwd']:.0f} | "
              f"{r['cudnn_fwdbwd']:.0f} | {r['ours_fwdbwd'] / r['flash_fwdbwd']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=gpu, date=date, torch=torch.__version__, accuracy=acc, speed=spd), f, indent=1)
    return 0 if all(r["ok"] for r in acc) else 1


if __name__ == "__main__":
    sys.exit(main())

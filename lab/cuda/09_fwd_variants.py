#!/usr/bin/env python3
"""Lab 09: forward variants of one build side by side (ATTNKIT_LAB_FWD="order,pingpong,half,
persistent" selects the variant at each launch; the switch lived only in the lab build of commit
a4b50a8, the promoted code has none and ignores it), and other builds (LIBS), beside
torch's flash and cuDNN backends, on bench_cuda.py's shapes (bf16, B·N = 32768, H·D = 2048).
Same process, same tensors, interleaved rounds, medians of CUDA-event timings.

Before timing, each variant's output (poisoned with NaN first) is checked against torch flash's
on the same inputs: every element finite and ‖ours − flash‖ / ‖flash‖ < 1e-2 (bf16 storage;
the two differ by rounding only, ~3e-3).

usage: [LIBS=name=other.so,...] 09_fwd_variants.py LIB.so [name=spec ...]
LIBS: other builds (the code before lab 09, variants built with a different constexpr) timed in
the same process, one column each.
"""
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
sys.path.insert(0, os.environ.get("BENCH_DIR", ""))
from bench_cuda import Attnkit, time_ms, torch_sdpa  # noqa: E402

DEFAULT = ["base=0,0,0,-1", "half=0,0,1,-1", "group=1,0,1,0", "pairs=2,0,1,1", "pp=0,1,1,-1",
           "pairs_pp=2,1,1,1", "group_pp=1,1,1,0"]


def main():
    lib = sys.argv[1]
    variants = [a.split("=", 1) for a in (sys.argv[2:] or DEFAULT)]
    ak = Attnkit(lib)
    libs = {}
    for item in filter(None, os.environ.get("LIBS", "").split(",")):
        name, path = item.split("=", 1)
        libs[name] = Attnkit(path)
    reps = int(os.environ.get("REPS", "15"))
    rounds = int(os.environ.get("ROUNDS", "5"))
    names = [n for n, _ in variants] + list(libs)
    print(f"# lab 09 forward variants on {torch.cuda.get_device_name()}, torch {torch.__version__}: TFLOP/s")
    print("# " + ", ".join(f"{n} = {s}" for n, s in variants))
    head = "| N | D | causal | flash | cuDNN |" + "".join(f" {n} |" for n in names) + " best / cuDNN | best / flash |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    bad = 0
    for N in (4096, 16384):
        for D in (64, 128):
            for causal in (False, True):
                B, H = 32768 // N, 2048 // D
                torch.manual_seed(N + D)
                q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                o = torch.empty_like(q)
                lse = torch.empty(B, H, N, device="cuda")
                F = 4 * B * H * N * N * D / (2 if causal else 1)
                ref = torch_sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION).float()
                for n, spec in variants + [(x, None) for x in libs]:
                    os.environ["ATTNKIT_LAB_FWD"] = spec or ""
                    o.fill_(float("nan"))
                    (libs[n] if spec is None else ak).fwd(q, k, v, o, lse, causal)
                    torch.cuda.synchronize()
                    err = ((o.float() - ref).norm() / ref.norm()).item()
                    if not (torch.isfinite(o).all().item() and err < 1e-2):
                        print(f"WRONG: {n} N={N} D={D} causal={causal}: rel {err:.2e}", flush=True)
                        bad += 1
                del ref
                t = {x: [] for x in names + ["flash", "cudnn"]}
                for _ in range(rounds):
                    t["flash"].append(time_ms(lambda: torch_sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION), reps))
                    t["cudnn"].append(time_ms(lambda: torch_sdpa(q, k, v, causal, SDPBackend.CUDNN_ATTENTION), reps))
                    for n, spec in variants:
                        os.environ["ATTNKIT_LAB_FWD"] = spec
                        t[n].append(time_ms(lambda: ak.fwd(q, k, v, o, lse, causal), reps))
                    for x, lib in libs.items():
                        t[x].append(time_ms(lambda: lib.fwd(q, k, v, o, lse, causal), reps))
                os.environ.pop("ATTNKIT_LAB_FWD", None)
                tf = {x: F / statistics.median(ts) / 1e9 for x, ts in t.items()}
                best = max(tf[n] for n in names)
                row = f"| {N} | {D} | {'yes' if causal else 'no'} | {tf['flash']:.0f} | {tf['cudnn']:.0f} |"
                row += "".join(f" {tf[n]:.0f} |" for n in names)
                row += f" {best / tf['cudnn']:.2f} | {best / tf['flash']:.2f} |"
                print(row, flush=True)
                del q, k, v, o, lse
                torch.cuda.empty_cache()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

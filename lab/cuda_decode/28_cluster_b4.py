"""Lab cuda_decode 28: the B = 4 × 65536 bar shape without the combine kernel.

Measured (H100, 2026-11-23): automatic 357.4 µs physical, 361.3 churned; without the combine
355.8 / 357.9; the cluster merge 372.7-459.8; cuDNN 362.4.

    python3 lab/cuda_decode/28_cluster_b4.py <lab build>/bench/libattnkit_decode_capi.so [rounds]

The library is built from main with lab 18's cluster merge applied (18_cluster_merge.diff) and
two lab-only switches (28_lab_switches.diff): a tuning's ctas_per_sm of 100 + cap asks for the
cluster merge, and ATTNKIT_LAB_SKIP_COMBINE leaves the combine kernel out (output wrong; it
measures what the combine adds to a call). At B = 4 the automatic launch is 128 CTAs of 4 warps,
4 a sequence and KV head, 3 stages, 256-byte L2 prefetch, then the combine kernel; the cluster
form is the same grid with each sequence-and-head's 4 CTAs in one cluster, merging through
distributed shared memory.
"""
import importlib.util
import os
import sys

spec = importlib.util.spec_from_file_location(
    "lab27", os.path.join(os.path.dirname(os.path.abspath(__file__)), "27_launch_shapes.py"))
lab27 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab27)

SHAPES = {
    4: [("auto", None),
        ("auto, no combine", None),
        ("cluster 4w 3st pf256", (4, 3, 0, 256, 0, 101)),
        ("cluster 4w 2st", (4, 2, 0, 0, 0, 101)),
        ("cluster 8w 2st", (8, 2, 0, 0, 0, 101))],
}

if __name__ == "__main__":
    lab27.run(lab27.bcd.load(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 7, SHAPES,
              "lab cuda_decode 28", env={"auto, no combine": "ATTNKIT_LAB_SKIP_COMBINE"})

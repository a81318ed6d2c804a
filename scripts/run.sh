#!/usr/bin/env bash
# Installs the dependencies, builds attnkit (optimized) and runs the main job: a sweep of the
# exact attention kernels over sequence length on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release
cmake --build --preset release -j "$(nproc)"
./build/release/attnkit bench --variants naive,flash --n 256,512,1024,2048,4096 --json build/release/bench.json

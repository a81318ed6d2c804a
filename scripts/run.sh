#!/usr/bin/env bash
# Installs the dependencies, builds attnkit (optimized) and runs the main job, `attnkit report`:
# the cost model, a benchmark sweep, a transformer-layer profile and the advisor, written as an
# HTML page with plots to build/release/report/index.html (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release
cmake --build --preset release -j "$(nproc)"
./build/release/attnkit report --out build/release/report
echo "open build/release/report/index.html"

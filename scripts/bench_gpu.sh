#!/usr/bin/env bash
# The GPU figures of docs/performance.md, unattended, on a GPU machine that has Python and torch
# but maybe not the rest: `make bench-gpu` (or scripts/bench_gpu.sh [--dry-run] [OPTIONS]).
#
# 1. The packages the steps import and torch does not bring (hydra-core, omegaconf, wandb,
#    pytest, tqdm, PyYAML) are installed where missing, offline, from the wheels in
#    .carry/wheels (LSMIX_WHEELS): prepare that folder on a machine with internet, for the
#    GPU machine's Python version (docs/performance.md, "Preparing a bare GPU machine").
# 2. The CIFAR-10 copy is .carry/data/cifar10_jpeg.npz (LSMIX_CIFAR10), the JPEG-scan archive
#    of ../shared/data (18 MiB; decoded on the machine, not carried decoded).
# 3. python -m src.tools.bench_gpu runs every step within its time budget and writes
#    bench_gpu.json, performance.md and the logs into --out (make: $(OUT)/bench_gpu).
# PYTHON names the interpreter (make passes the project's environment where there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${LSMIX_WHEELS:-.carry/wheels}"
DATA="${LSMIX_CIFAR10:-.carry/data/cifar10_jpeg.npz}"

# module -> distribution, for what the steps import beyond torch and numpy
missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"hydra": "hydra-core", "omegaconf": "omegaconf", "wandb": "wandb",
          "pytest": "pytest", "tqdm": "tqdm", "yaml": "PyYAML"}
print(" ".join(dist for mod, dist in wanted.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "bench_gpu: missing packages ($missing) and no wheel folder $WHEELS to install" \
             "them from: see docs/performance.md, 'Preparing a bare GPU machine'" >&2
        exit 3
    fi
    echo "bench_gpu: installing $missing from $WHEELS (offline)"
    # shellcheck disable=SC2086  # one word per distribution
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $missing
fi

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done
if [ "$dry" = 0 ] && [ ! -f "$DATA" ]; then
    echo "bench_gpu: no CIFAR-10 archive at $DATA: copy cifar10_jpeg.npz there" \
         "(docs/performance.md)" >&2
    exit 3
fi
exec "$PY" -m src.tools.bench_gpu --data "$DATA" "$@"

#!/usr/bin/env bash
# One call on a lent GPU (the device tool), about 500 s on one H200 with 16 cores:
#   make gpu-wheels && python benchmarks/pack_data.py --root /tmp/imagenette2-224   # here, once
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "data-pack"], timeout_s=600)
# Arguments go to gpu_check.py (--steps cuda_tests sota_leaderboard: only those).
# The machine has torch, Lightning, timm, torchmetrics and pytest but not Hydra, and no network:
# Hydra's wheels travel in .whl/, the full split in data-pack/ (both ignored by git). At most 8
# files come back in $OUT; caches and run folders stay in $WORK. --smoke: the same steps on this
# CPU at smoke scale on the mini set (the test suite runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
WORK=${WORK:-/tmp/lightning-sota-gpu-check}
export PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--smoke" ]]; then
    exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py --out "$OUT" --work "$WORK" "$@"
fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
    [[ -d .whl ]] || { echo "gpu_check: no Hydra here and no .whl/ carried: run make gpu-wheels first" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Anything else train.py imports that this machine lacks: named now, not in the first step's trace.
if ! err=$("$PYTHON" -c "import lightning_sota.run.train, lightning_sota.serve.predict" 2>&1); then
    echo "gpu_check: ${err##*$'\n'}: carry its wheel in .whl/ (make gpu-wheels)" >&2
    exit 2
fi
PACK=/tmp/imagenette-pack
if [[ ! -d $PACK/train ]]; then
    [[ -f data-pack/imagenette-pack.tar ]] || {
        echo "gpu_check: no data-pack/imagenette-pack.tar: run benchmarks/pack_data.py and carry data-pack" >&2
        exit 2
    }
    mkdir -p "$PACK" && tar -xf data-pack/imagenette-pack.tar -C "$PACK"
fi
exec "$PYTHON" benchmarks/gpu_check.py --out "$OUT" --work "$WORK" --root "$PACK" "$@"

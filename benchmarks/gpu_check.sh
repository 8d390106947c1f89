#!/usr/bin/env bash
# The GPU check: one command, from a checkout and nothing else, that measures on one GPU in under
# 8 minutes what README's Benchmarks section lacks (it prints a summary to copy there):
#   1. trainer images/s: the mi300x preset and the dim-512 ViT, bf16 and fp32, eager and compiled
#   2. host waits: the share of the GPU's time spent waiting on the host, and host syncs per step
#   3. vitsweep run --workers 2 against --workers 1 on one GPU, in trials/hour
#   4. time to accuracy of sweeps/gpu_recipe.yaml on the full CIFAR-10 (budget shortened)
#
#   bash benchmarks/gpu_check.sh                          # on a GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick     # end to end on a CPU: tiny models, 1-2 minutes
#   bash benchmarks/gpu_check.sh --only throughput        # one or more sections (throughput,host,workers,tta)
#   bash benchmarks/gpu_check.sh --only tta --tta-minutes 9   # the recipe's full budget
#   bash benchmarks/gpu_check.sh --help                   # every option
#
# It uses the Python that can import this checkout's vitsweep (PYTHONPATH is set to the checkout),
# $PYTHON if set; when the dependencies are missing it makes a venv under storage/ that reuses the
# system's packages (torch included) and runs `pip install -e .` there, which needs the network.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

commit="not a git checkout"
if rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null)"; then
  commit="commit $rev"; git -C "$repo" diff --quiet HEAD 2>/dev/null || commit="$commit with uncommitted changes"
fi
echo "== vitsweep GPU check: $commit, $(date '+%Y-%m-%d %H:%M'), $(hostname) =="
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L
  nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/driver, memory: /' || true
else
  echo "NO GPU: nvidia-smi finds no NVIDIA GPU on this machine. Nothing below is a GPU figure."
fi

importable() { "$1" -c 'import torch, optuna, typer, yaml, vitsweep.cli' >/dev/null 2>&1; }
py="${PYTHON:-python3}"
if ! importable "$py"; then
  venv="$repo/storage/gpu-check-venv"
  if [ ! -x "$venv/bin/python" ] || ! importable "$venv/bin/python"; then
    echo "vitsweep's dependencies are not importable with $py: installing into $venv (pip install -e .)"
    "$py" -m venv --system-site-packages "$venv"
    if ! "$venv/bin/python" -m pip install -q -e "$repo"; then
      echo "error: pip install -e $repo failed (no network here?): install vitsweep's dependencies (torch, optuna," \
           "mlflow, typer, ...) or set PYTHON to an interpreter that has them" >&2
      exit 1
    fi
  fi
  py="$venv/bin/python"
fi
exec "$py" "$repo/benchmarks/gpu_check.py" "$@"

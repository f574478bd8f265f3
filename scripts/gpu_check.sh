#!/usr/bin/env bash
# The GPU readiness check (scripts/gpu_check.py) on a GPU machine that has Python 3.12, torch and torchvision but
# neither MONAI nor internet. Two steps, described in docs/BENCHMARKS.md ("GPU check"):
#
#   here, with PyPI:       bash scripts/gpu_check.sh download   -> wheels/ (about 52 MiB; not committed)
#   on the GPU machine:    bash scripts/gpu_check.sh            -> $OUT/gpu_check.json (else runs/gpu_check/)
#
# The wheels are only what the check imports beyond torch/torchvision (and numpy, pillow, networkx, which they
# bring): MONAI and ignite (the bundle), pydicom (the NM reader), scipy (the synthetic data), scikit-image and
# pycocotools (annotations, lesion metric), tqdm (chest detector); lazy_loader, imageio, tifffile and packaging
# are what scikit-image and ignite require. Found by running the CPU check in a venv holding torch alone and
# adding each module it failed to import. Versions: constraints.txt where it pins them, else the dev venv's.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    monai==1.6.1
    pytorch-ignite==0.5.5
    pydicom==3.0.2
    scipy==1.17.1
    scikit-image==0.26.0
    pycocotools==2.0.11
    tqdm==4.70.1
    lazy_loader==0.6
    imageio==2.38.2
    tifffile==2026.3.3
    packaging==26.4
)

if [[ "${1:-}" == download ]]; then
    # --no-deps: monai and ignite require torch, which the GPU machine has and pip would fetch (gigabytes).
    # manylinux_2_28 also admits older manylinux wheels; torch's own wheels need glibc 2.28 anyway.
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --platform manylinux_2_28_x86_64 -d wheels/ "${WHEELS[@]}"
    du -sh wheels/
    exit 0
fi

PY=${PYTHON:-python3}
WHEEL_DIR=${GPU_CHECK_WHEELS:-wheels}
VENV=${GPU_CHECK_VENV:-/tmp/malignet-gpu-venv}
WORK=${GPU_CHECK_WORK:-/tmp/malignet-gpu-check}
OUTDIR=${OUT:-runs/gpu_check}
mkdir -p "$OUTDIR"

# --system-site-packages: the machine's CUDA build of torch is the one measured
if "$PY" -m venv --system-site-packages "$VENV"; then
    PIP=("$VENV/bin/python" -m pip)
else  # a Python without ensurepip: a venv without pip, filled by the machine's pip
    "$PY" -m venv --system-site-packages --without-pip "$VENV"
    PIP=("$PY" -m pip --python "$VENV/bin/python")
fi
# Resolved against what the machine has (torch, numpy, pillow), so a missing requirement is named here; a torch
# installed without pip metadata for its own requirements fails that, so then the listed wheels go in alone.
"${PIP[@]}" install --no-index --find-links "$WHEEL_DIR" "${WHEELS[@]}" \
    || "${PIP[@]}" install --no-deps --no-index --find-links "$WHEEL_DIR" "${WHEELS[@]}"
"$VENV/bin/python" -c 'import numpy, torch, torchvision, monai, ignite, scipy, skimage, pycocotools, pydicom
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count(),
      "| torchvision", torchvision.__version__, "| numpy", numpy.__version__, "| monai", monai.__version__)'

# the bundle from this checkout, not installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
timeout -k 10 "${GPU_CHECK_TIMEOUT:-330}" "$VENV/bin/python" scripts/gpu_check.py --work_dir "$WORK" \
    --output "$OUTDIR/gpu_check.json" || status=$?
# each part's log comes back beside the JSON; the checkpoints (hundreds of MB) stay
mkdir -p "$OUTDIR/logs"
for log in "$WORK"/*/log.txt; do
    [[ -f "$log" ]] && cp "$log" "$OUTDIR/logs/$(basename "$(dirname "$log")").log"
done
exit "$status"

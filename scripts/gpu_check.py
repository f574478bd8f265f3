"""GPU readiness check of MaligNet and Mask R-CNN: AMP training, torchrun/NCCL, inference latency.

On a CUDA machine: 50 AMP steps of the thesis configuration (ResNet-50, 320 px, 16 labeled + 16 unlabeled
images) per model through ``configs/train.json`` (+ ``baseline.json``), inference latency at batch 1 and 16,
and a few steps of each under torchrun with ``configs/multi_gpu_train.json`` (NCCL). Elsewhere the same parts
with a tiny network on the CPU (gloo). Writes ``<work_dir>/gpu_check.json`` and prints a table; exits 1 when
a part failed. See ``malignet_bundle/experiments/gpu_check.py`` and, for a machine without MONAI or internet,
``scripts/gpu_check.sh``.

Example::

    python scripts/gpu_check.py --work_dir runs/gpu_check
"""

from __future__ import annotations

import sys

from malignet_bundle.experiments.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())

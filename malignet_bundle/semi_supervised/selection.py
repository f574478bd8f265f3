"""Semi-supervised methods by name, as bundle config overrides merged after ``configs/train.json``.

The MONAI Label train task picks one by name (``method``); the bundle runner picks one by config file. Only
the standard library is imported here: the MONAI Label app, in its own environment, validates names with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["METHODS", "method_overrides"]

# name → what it trains on, for the MONAI Label task's description and error messages
METHODS = {
    "ladder": "labeled studies + the ladder cost on the unlabeled ones (configs/train.json)",
    "mean_teacher": "ladder + an EMA teacher's pseudo-labels on the unlabeled studies (configs/mean_teacher.json)",
    "supervised": "labeled studies only",
}


def method_overrides(method: str, config_dir: str | os.PathLike, teacher_ready: bool = False) -> dict[str, Any]:
    """The overrides that make ``configs/train.json`` train with ``method``.

    Args:
        method: one of :data:`METHODS`.
        config_dir: the bundle's ``configs`` folder.
        teacher_ready: the student starts from trained weights (``initial_weights``): the mean teacher then
            labels from the first step (no burn-in), since burning in a trained model only spends steps.

    Returns:
        Config id → value; empty for ``ladder`` (``train.json`` as it is).

    Raises:
        ValueError: for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown semi-supervised method {method!r}; choose among {sorted(METHODS)}")
    if method == "ladder":
        return {}
    if method == "supervised":
        return {
            "semi_supervised": {"_target_": "malignet_bundle.semi_supervised.supervised.Supervised"},
            "train#trainer#unlabeled_data_loader": None,
            "train#unlabeled_dataset#data": [],
        }
    overrides = json.loads((Path(config_dir) / "mean_teacher.json").read_text(encoding="utf-8"))
    if teacher_ready:
        overrides["mean_teacher_burn_in"] = 0
    return overrides

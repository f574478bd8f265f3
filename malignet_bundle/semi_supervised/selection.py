"""Semi-supervised methods by name, as bundle config overrides merged after ``configs/train.json``.

The MONAI Label train task picks one by name (``method``); the bundle runner picks one by config file. Which
methods a network can train with depends on the network (:mod:`malignet_bundle.networks.selection`):
MaligNet has all three; a pixel-level U-Net has no ladder pyramid, and its mean teacher is the segmentation
one (``configs/segmentation_mean_teacher.json``: softmax consistency, not pseudo-labeled instances). Only the
standard library is imported here: the MONAI Label app, in its own environment, validates names with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from malignet_bundle.networks.selection import DEFAULT_NETWORK, is_pixel_level

__all__ = ["METHODS", "PIXEL_LEVEL_METHODS", "method_overrides", "network_methods", "default_method", "check_method"]

# name → what it trains on, for the MONAI Label task's description and error messages
METHODS = {
    "ladder": "labeled studies + the ladder cost on the unlabeled ones (configs/train.json)",
    "mean_teacher": "ladder + an EMA teacher's pseudo-labels on the unlabeled studies (configs/mean_teacher.json)",
    "supervised": "labeled studies only",
}

# the methods of a pixel-level network (configs/segmentation.json), the first its default
PIXEL_LEVEL_METHODS = {
    "supervised": "labeled studies only (configs/segmentation.json)",
    "mean_teacher": "labeled studies + an EMA teacher's class probabilities as consistency targets on the "
    "unlabeled ones (configs/segmentation_mean_teacher.json)",
}


def network_methods(network: str = DEFAULT_NETWORK) -> dict[str, str]:
    """The methods ``network`` can train with: name → what it trains on, the default first.

    Args:
        network: one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Raises:
        ValueError: for an unknown network.
    """
    return dict(PIXEL_LEVEL_METHODS) if is_pixel_level(network) else dict(METHODS)


def default_method(network: str = DEFAULT_NETWORK) -> str:
    """The method a training of ``network`` uses unless told: ``ladder`` for MaligNet, else ``supervised``.

    Args:
        network: one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Raises:
        ValueError: for an unknown network.
    """
    return next(iter(network_methods(network)))


def check_method(method: str, network: str = DEFAULT_NETWORK) -> str:
    """``method`` if ``network`` can train with it.

    Args:
        method: a method name.
        network: one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: for an unknown network or method, or one the network cannot train with (``ladder`` on a
            U-Net, which has no ladder pyramid), listing the network's methods.
    """
    methods = network_methods(network)
    if method in methods:
        return method
    if not is_pixel_level(network):
        raise ValueError(f"unknown semi-supervised method {method!r}; choose among {sorted(METHODS)}")
    if method == "ladder":
        raise ValueError(
            f"method 'ladder' needs MaligNet's ladder feature pyramid, which network {network!r} (a pixel-level "
            f"U-Net) does not have; choose among {', '.join(methods)}"
        )
    raise ValueError(
        f"unknown semi-supervised method {method!r} for network {network!r}; choose among {', '.join(methods)}"
    )


def method_overrides(
    method: str, config_dir: str | os.PathLike, teacher_ready: bool = False, network: str = DEFAULT_NETWORK
) -> dict[str, Any]:
    """The overrides that make ``configs/train.json`` (and ``network``'s configs after it) train with ``method``.

    Args:
        method: one of :func:`network_methods` of ``network``.
        config_dir: the bundle's ``configs`` folder.
        teacher_ready: the student starts from trained weights (``initial_weights``): the mean teacher then
            teaches from the first step, since its targets are already a trained model's: no burn-in
            (MaligNet), no consistency ramp-up (a pixel-level network).
        network: one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Returns:
        Config id → value; empty for ``ladder`` on MaligNet (``train.json`` as it is) and for ``supervised``
        on a pixel-level network (its configs as they are).

    Raises:
        ValueError: for an unknown method or network, or a method the network cannot train with (``ladder``
            on a U-Net, which has no ladder pyramid).
    """
    check_method(method, network)
    if is_pixel_level(network):
        return _pixel_level_overrides(method, Path(config_dir), teacher_ready)
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


def _pixel_level_overrides(method: str, config_dir: Path, teacher_ready: bool) -> dict[str, Any]:
    """``method_overrides`` of a checked method for a network built by ``configs/segmentation.json``."""
    if method == "supervised":
        return {}  # segmentation.json trains supervised, without the unlabeled loader
    overrides = json.loads((config_dir / "segmentation_mean_teacher.json").read_text(encoding="utf-8"))
    if teacher_ready:
        overrides["consistency_ramp_up"] = 0
    return overrides

"""Networks by name, as the bundle config files that build them: MaligNet or a pixel-level U-Net baseline.

The MONAI Label app serves one network, chosen by name (``--conf network unet``); the bundle runner chooses
one by config files. A name stands for the files merged after ``configs/train.json`` (training) and after
``configs/train.json`` + ``configs/inference.json`` (inference; ``segmentation.json`` sets nested ``train#``
and ``validate#`` ids, so it needs ``train.json`` beneath it). MaligNet is ``train.json`` itself and keeps
its own inference config, ``inference.json`` alone.

Only the standard library is imported here: the MONAI Label app, in its own environment, validates names
with it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_NETWORK",
    "NETWORKS",
    "DESCRIPTIONS",
    "check_network",
    "is_pixel_level",
    "training_config_files",
    "inference_config_files",
]

DEFAULT_NETWORK = "malignet"
# the marker of a pixel-level network: its configs put a class-per-pixel SemanticSegmenter behind the
# detectors' interface, which has no ladder pyramid and no region proposals
_SEGMENTATION_CONFIG = "segmentation.json"

# name → config files (in ``configs/``) merged, in this order, after train.json (and inference.json)
NETWORKS: dict[str, tuple[str, ...]] = {
    "malignet": (),
    "unet": (_SEGMENTATION_CONFIG,),
    "double_unet": (_SEGMENTATION_CONFIG, "double_unet.json"),
}

# name → what it is, for the MONAI Label tasks' descriptions and error messages
DESCRIPTIONS: dict[str, str] = {
    "malignet": "MaligNet: ResNet-50 + ladder FPN + Mask R-CNN heads, lesion instances with class and score",
    "unet": "U-Net (MONAI BasicUNet, configs/segmentation.json): a class per pixel, each region one lesion",
    "double_unet": "Double U-Net (configs/double_unet.json): a class per pixel, each region one lesion",
}


def check_network(network: str) -> str:
    """``network`` if it is one of :data:`NETWORKS`.

    Args:
        network: a network name.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose among {', '.join(NETWORKS)}")
    return network


def is_pixel_level(network: str) -> bool:
    """Whether ``network`` is a semantic (class-per-pixel) segmentation network rather than a detector.

    Args:
        network: one of :data:`NETWORKS`.

    Raises:
        ValueError: for an unknown name.
    """
    return _SEGMENTATION_CONFIG in NETWORKS[check_network(network)]


def training_config_files(network: str, config_dir: str | os.PathLike) -> list[Path]:
    """The config files of a training of ``network``: ``train.json`` and the network's files after it.

    Args:
        network: one of :data:`NETWORKS`.
        config_dir: the bundle's ``configs`` folder.

    Raises:
        ValueError: for an unknown name.
    """
    config_dir = Path(config_dir)
    return [config_dir / "train.json", *(config_dir / name for name in NETWORKS[check_network(network)])]


def inference_config_files(network: str, config_dir: str | os.PathLike) -> list[Path]:
    """The config files of an inference with ``network``.

    MaligNet: ``inference.json`` alone. Another network: ``train.json``, ``inference.json``, then the
    network's files (their nested ``train#``/``validate#`` ids need ``train.json``'s sections, and
    ``inference.json`` must come after ``train.json`` to replace its workflow).

    Args:
        network: one of :data:`NETWORKS`.
        config_dir: the bundle's ``configs`` folder.

    Raises:
        ValueError: for an unknown name.
    """
    config_dir = Path(config_dir)
    network_files = NETWORKS[check_network(network)]
    if not network_files:
        return [config_dir / "inference.json"]
    return [config_dir / "train.json", config_dir / "inference.json", *(config_dir / name for name in network_files)]

"""Train and evaluate the chest detector on whole-body views with annotated chest boxes.

A compact loop rather than an ignite engine: the detector trains in minutes on a CPU, has two loss terms
and one metric (box Jaccard, thesis §6.1), and runs before MaligNet's own bundle workflows.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAdjustContrastd,
    RandScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    SelectItemsd,
)
from tqdm import tqdm

from malignet_bundle.atomic_io import save_torch_atomic
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import resolve_items
from malignet_bundle.networks.chest_detector import ChestDetector, box_jaccard
from malignet_bundle.transforms.io import LoadAnnotationd, LoadNMViewd, SelectViewd

__all__ = ["chest_view_transforms", "train_chest_detector", "evaluate_chest_detector", "save_atomic"]

logger = logging.getLogger(__name__)


def chest_view_transforms(class_map: ClassMap, train: bool = False) -> Compose:
    """Resolved datalist item → anterior-oriented whole-body view scaled to 0–1, with its ``chest_box``."""
    steps = [
        LoadNMViewd("image"),
        LoadAnnotationd("label", class_map=class_map),
        SelectViewd("image"),
        ScaleIntensityRangePercentilesd("image", 0, 99.5, 0.0, 1.0),
        SelectItemsd(["image", "chest_box"]),
        EnsureTyped(["image", "chest_box"], track_meta=False),
    ]
    if train:  # brightness/contrast as readers adjust them (thesis §5.2)
        steps += [RandScaleIntensityd("image", factors=0.3, prob=0.8), RandAdjustContrastd("image", prob=0.5)]
    return Compose(steps)


def _items(items: list[dict], dataset_dir: Path) -> list[dict]:
    """Annotated items with resolved paths (the detector learns from annotated chest boxes only)."""
    return resolve_items([it for it in items if "label" in it], dataset_dir)


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    save_torch_atomic(state, path)


@torch.no_grad()
def evaluate_chest_detector(
    detector: ChestDetector, loader: DataLoader, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Box Jaccard between predicted and annotated chest boxes: min, mean, max over views (thesis §6.1)."""
    detector.eval()
    scores = []
    for batch in loader:
        pred = detector(batch["image"].to(device))
        scores.append(box_jaccard(pred.cpu(), batch["chest_box"].view(-1, 4)))
    jaccard = torch.cat(scores).numpy()
    return {
        "jaccard_min": float(jaccard.min()),
        "jaccard_mean": float(jaccard.mean()),
        "jaccard_max": float(jaccard.max()),
        "views": int(len(jaccard)),
    }


def train_chest_detector(
    datalist: dict[str, list[dict]],
    dataset_dir: str | os.PathLike,
    class_map: ClassMap,
    output: str | os.PathLike,
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    weight_decay: float = 5e-4,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Train on ``labeled`` views, keep the best ``validation`` Jaccard, report ``test``; saves ``output``.

    Adam with the thesis's SSD settings (Table 10: lr 1e-3, weight decay 5e-4). Returns the validation
    and test metrics of the saved weights.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    root = Path(dataset_dir)
    train_ds = CacheDataset(
        _items(datalist["labeled"], root), chest_view_transforms(class_map, train=True), progress=False
    )
    val_ds = CacheDataset(_items(datalist["validation"], root), chest_view_transforms(class_map), progress=False)
    test_ds = CacheDataset(_items(datalist["test"], root), chest_view_transforms(class_map), progress=False)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError("the chest detector needs annotated 'labeled' and 'validation' views")
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=0)
    val_loader = DataLoader(val_ds, batch_size=batch_size, num_workers=0)
    test_loader = DataLoader(test_ds, batch_size=batch_size, num_workers=0)

    detector = ChestDetector().to(device)
    optimizer = torch.optim.Adam(detector.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best, best_state = -1.0, None
    bar = tqdm(range(epochs), desc="chest detector", disable=not progress)
    for _ in bar:
        detector.train()
        for batch in train_loader:
            losses = detector(batch["image"].to(device), batch["chest_box"].view(-1, 4).to(device))
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        val = evaluate_chest_detector(detector, val_loader, device)
        bar.set_postfix(loss=f"{loss.detach().item():.3f}", val_jaccard=f"{val['jaccard_mean']:.3f}")
        if val["jaccard_mean"] > best:
            best, best_state = val["jaccard_mean"], copy.deepcopy(detector.state_dict())
    detector.load_state_dict(best_state)
    metrics = {"validation": evaluate_chest_detector(detector, val_loader, device)}
    if len(test_ds):
        metrics["test"] = evaluate_chest_detector(detector, test_loader, device)
    save_atomic(detector.state_dict(), output)
    logger.info("chest detector saved to %s: %s", output, metrics)
    return metrics

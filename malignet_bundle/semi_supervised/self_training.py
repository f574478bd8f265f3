"""Self-training (thesis §6.5, Table 8): pseudo-labels from a trained model on the unlabeled scans.

The model's detections on unlabeled chest crops become training targets, filtered by confidence either at
lesion level (drop detections scoring below the threshold) or at image level (drop every image that has a
detection scoring below the threshold; thesis best: 0.85, image level). The student starts from the
teacher's weights and trains on labeled plus pseudo-labeled crops.

Self-training changes the data, not the step: ``configs/self_training.json`` adds the pseudo-labeled crops
to the labeled dataset before training starts, and each iteration is the one the other configs chose
(:class:`~malignet_bundle.semi_supervised.ladder.Ladder` with ``train.json``,
:class:`~malignet_bundle.semi_supervised.supervised.Supervised` with ``baseline.json``). Its online
counterpart, labels from a teacher that keeps learning, is :mod:`~malignet_bundle.semi_supervised.mean_teacher`.

An image on which the teacher finds nothing at all is dropped unless ``keep_empty``: a weak teacher misses
lesions far more often than a scan is truly clean, and every kept empty image is an all-background target
that teaches the student to find nothing (the ``cpu`` benchmark's self-training row collapsed that way).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from monai.data import DataLoader
from monai.data.utils import no_collation
from torch.utils.data import Dataset

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.transforms.geometry import masks_to_boxes

__all__ = ["pseudo_label"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def pseudo_label(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    threshold: float = 0.85,
    level: str = "image",
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    mask_threshold: float = 0.5,
    keep_empty: bool = False,
    summary_file: str | os.PathLike | None = None,
) -> list[dict]:
    """Load the teacher's weights into ``network`` and return pseudo-labeled samples of ``dataset``.

    Args:
        network: the model to label with (and, afterwards, to train: it keeps the teacher's weights).
        checkpoint: teacher weights (``model.pt`` of a finished run), loaded with ``weights_only=True``.
        dataset: unlabeled chest crops (items with ``image``), deterministic transforms only.
        threshold: minimum detection score.
        level: "lesion" or "image", as in the module docstring.
        device: where to run the teacher.
        batch_size: images per forward.
        mask_threshold: probability above which a mask pixel belongs to the lesion.
        keep_empty: keep images without any detection at or above ``threshold`` as all-background targets.
        summary_file: where to write the counts as JSON (``seen``, ``kept``, ``lesions``, ``dropped_lesions``,
            ``empty``, ``empty_kept``, ``threshold``, ``level``), atomically; None writes none. A benchmark
            reads how much the teacher gave its student there instead of in the log.

    Returns:
        Samples with ``image``, ``masks`` (N, H, W uint8), ``labels``, ``boxes`` on the CPU.

    Raises:
        ValueError: for an unknown ``level``.
        FileNotFoundError: when ``checkpoint`` does not exist.
    """
    if level not in ("lesion", "image"):
        raise ValueError(f"level must be 'lesion' or 'image', got {level!r}")
    module = network.module if hasattr(network, "module") else network
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{checkpoint}: teacher checkpoint not found; train a model first") from e
    module.load_state_dict(state)
    module.eval()
    samples: list[dict] = []
    seen = dropped_lesions = empty = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=no_collation, num_workers=0):
        images: Sequence[torch.Tensor] = [torch.as_tensor(item["image"]) for item in batch]
        detections = module([image.to(device) for image in images])
        for image, det in zip(images, detections, strict=True):
            seen += 1
            scores = det["scores"].cpu()
            low = scores < threshold
            if level == "image" and bool(low.any()):
                continue
            keep = ~low
            if not keep.any():
                empty += 1
                if not keep_empty:
                    continue
            dropped_lesions += int(low.sum())
            masks = (det["masks"][keep.to(det["masks"].device), 0] > mask_threshold).to(torch.uint8).cpu()
            samples.append(
                {
                    "image": image.cpu(),
                    "masks": masks,
                    "labels": det["labels"].cpu()[keep],
                    "boxes": masks_to_boxes(masks),
                }
            )
    lesions = sum(len(s["labels"]) for s in samples)
    logger.info(
        "pseudo-labels (%s level, score >= %.2f): %d of %d images kept, %d lesions, %d lesions dropped, "
        "%d images without detections %s",
        level,
        threshold,
        len(samples),
        seen,
        lesions,
        dropped_lesions,
        empty,
        "kept" if keep_empty else "dropped",
    )
    if summary_file is not None:
        summary = {
            "seen": seen,
            "kept": len(samples),
            "lesions": lesions,
            "dropped_lesions": dropped_lesions,
            "empty": empty,
            "empty_kept": keep_empty,
            "threshold": float(threshold),
            "level": level,
        }
        write_json_atomic(summary, summary_file)
    module.train()
    return samples

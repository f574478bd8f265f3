"""A semantic model's label map as lesion instances, so the lesion protocol scores it like a detector.

Tables 4–7, COCO AP and FROC (:mod:`~malignet_bundle.metrics.evaluation`) match predicted lesions to
ground-truth lesions. A semantic model (U-Net, Double U-Net) predicts a class per pixel instead; here each
8-connected region of one class of its label map becomes one lesion (as annotators' label maps become
lesions, :func:`~malignet_bundle.outputs.label_map.label_map_instances`):

- mask: the region;
- class: the region's class;
- score: the mean foreground probability (1 − P(background)) over the region's pixels, so the threshold
  curve, the operating threshold, AP and FROC rank a semantic model's lesions as they rank a detector's.
  Scores lie above 0.5: a pixel is a lesion pixel only where its class outscores background, so its
  foreground probability exceeds its background one; operating thresholds below 0.5 all keep every region.

Two touching lesions of one class become one region, which the lesion protocol counts as one prediction: a
limit of semantic models that this protocol shows and the pixel protocol does not. The pixel protocol
(:mod:`~malignet_bundle.metrics.pixel`) scores the whole label map, regions below the score floor included.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from malignet_bundle.transforms.geometry import masks_to_boxes

__all__ = ["label_map_to_instances", "semantic_detections"]

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_map_to_instances(
    label_map: Tensor,
    probabilities: Tensor,
    score_floor: float = 0.0,
    min_pixels: int = 1,
    max_lesions: int | None = 100,
) -> dict[str, Tensor]:
    """One lesion per 8-connected region of one class; score = the region's mean foreground probability.

    Args:
        label_map: (H, W) class per pixel, 0 background.
        probabilities: (C + 1, H, W) class probabilities (channel 0 background) the label map came from.
        score_floor: regions scoring below it are left out (a detector's box score threshold).
        min_pixels: regions with fewer pixels are left out.
        max_lesions: at most this many lesions, the highest scoring (Mask R-CNN returns at most 100 per
            image); None: all. An untrained network's label map can hold thousands of specks, and each
            lesion's mask is a whole (H, W) map.

    Returns:
        ``boxes`` (N, 4) float32 (x0, y0, x1, y1, x1/y1 exclusive), ``labels`` (N,) int64, ``scores`` (N,)
        float32 and ``masks`` (N, 1, H, W) float32 in {0, 1} (the Mask R-CNN layout), by descending score
        (ties: by class, then region), on ``probabilities``' device.

    Raises:
        ValueError: when the label map is not 2-D, the probabilities not (C + 1, H, W) of the same size, or
            a label has no probability channel.
    """
    if label_map.dim() != 2:
        raise ValueError(f"a label map is (H, W), got shape {tuple(label_map.shape)}")
    if probabilities.dim() != 3 or tuple(probabilities.shape[1:]) != tuple(label_map.shape):
        raise ValueError(
            f"probabilities must be (C + 1, H, W) for a {tuple(label_map.shape)} label map, "
            f"got {tuple(probabilities.shape)}"
        )
    classes = label_map.detach().cpu().numpy().astype(np.int64)
    if classes.size and (classes.min() < 0 or classes.max() >= probabilities.shape[0]):
        raise ValueError(f"label map values must be in 0..{probabilities.shape[0] - 1}")
    foreground = (1.0 - probabilities[0].detach().float()).cpu().numpy().ravel()
    regions_of: dict[int, np.ndarray] = {}
    found = []  # (class, region id, score) of every region large enough and scoring enough
    for label in (int(v) for v in np.unique(classes) if v != 0):
        # 8-connected, as annotators' label maps become lesions (outputs/label_map.label_map_instances)
        regions, count = ndimage.label(classes == label, structure=EIGHT_CONNECTED)
        regions_of[label] = regions
        ids = regions.ravel()
        areas = np.bincount(ids, minlength=count + 1)[1:]
        scores = np.bincount(ids, weights=foreground, minlength=count + 1)[1:] / np.maximum(areas, 1)
        found += [
            (label, region + 1, float(scores[region]))
            for region in range(count)
            if areas[region] >= min_pixels and scores[region] >= score_floor
        ]
    found.sort(key=lambda lesion: -lesion[2])  # stable: ties stay by class, then region
    if max_lesions is not None:
        found = found[: int(max_lesions)]
    device = probabilities.device
    height, width = classes.shape
    masks = torch.zeros((len(found), height, width), dtype=torch.bool)
    for index, (label, region, _) in enumerate(found):
        masks[index] = torch.from_numpy(regions_of[label] == region)
    return {
        "boxes": masks_to_boxes(masks).to(device),
        "labels": torch.tensor([lesion[0] for lesion in found], dtype=torch.int64, device=device),
        "scores": torch.tensor([lesion[2] for lesion in found], dtype=torch.float32, device=device),
        "masks": masks[:, None].float().to(device),
    }


def semantic_detections(
    logits: Tensor,
    score_floor: float = 0.0,
    min_pixels: int = 1,
    max_lesions: int | None = 100,
    keep_label_map: bool = True,
) -> list[dict[str, Tensor]]:
    """A batch of class logits → per image the argmax label map's lesions (:func:`label_map_to_instances`).

    Args:
        logits: (B, C + 1, H, W) class logits (softmax over channels).
        score_floor: lesions scoring below it are left out.
        min_pixels: lesions with fewer pixels are left out.
        max_lesions: at most this many lesions per image, the highest scoring; None: all.
        keep_label_map: also return each image's ``label_map`` (H, W) int64, the argmax over classes that
            the pixel protocol (:class:`~malignet_bundle.metrics.pixel.SemanticPixelMetrics`) scores.

    Returns:
        One dict per image as :func:`label_map_to_instances` returns (plus ``label_map``).
    """
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    label_maps = probabilities.argmax(dim=1)
    detections = []
    for label_map, probs in zip(label_maps, probabilities, strict=True):
        detection = label_map_to_instances(label_map, probs, score_floor, min_pixels, max_lesions)
        if keep_label_map:
            detection["label_map"] = label_map
        detections.append(detection)
    return detections

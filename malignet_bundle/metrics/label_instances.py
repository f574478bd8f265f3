"""A semantic model's label map as lesion instances, so the lesion protocol scores it like a detector.

Tables 4–7, COCO AP and FROC (:mod:`~malignet_bundle.metrics.evaluation`) match predicted lesions to
ground-truth lesions. A semantic model (U-Net, Double U-Net) predicts a class per pixel instead; here each
8-connected region of one class of its label map becomes one lesion (as annotators' label maps become
lesions: :func:`~malignet_bundle.outputs.label_map.label_map_instances`):

- mask: the region;
- class: the region's class;
- score: the mean foreground probability (1 − P(background)) over the region's pixels, so the threshold
  curve, the operating threshold, AP and FROC rank a semantic model's lesions as they rank a detector's.

Two touching lesions of one class become one region, which the lesion protocol then counts as one
prediction: the semantic baselines pay for that as they would in the related work's lesion counts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from malignet_bundle.outputs.label_map import label_map_instances
from malignet_bundle.transforms.geometry import masks_to_boxes

__all__ = ["label_map_to_instances", "semantic_detections"]


def label_map_to_instances(
    label_map: Tensor, probabilities: Tensor, score_floor: float = 0.0, min_pixels: int = 1
) -> dict[str, Tensor]:
    """One lesion per 8-connected region of one class; score = the region's mean foreground probability.

    Args:
        label_map: (H, W) class per pixel, 0 background.
        probabilities: (C + 1, H, W) class probabilities (channel 0 background) the label map came from.
        score_floor: regions scoring below it are left out (a detector's box score threshold).
        min_pixels: regions with fewer pixels are left out.

    Returns:
        ``boxes`` (N, 4) float32 (x0, y0, x1, y1, x1/y1 exclusive), ``labels`` (N,) int64, ``scores`` (N,)
        float32 and ``masks`` (N, 1, H, W) float32 in {0, 1} (the Mask R-CNN layout), by descending score,
        on ``probabilities``' device.

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
    labels_np = label_map.detach().cpu().numpy().astype(np.int64)
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= probabilities.shape[0]):
        raise ValueError(f"label map values must be in 0..{probabilities.shape[0] - 1}")
    masks_np, region_labels = label_map_instances(labels_np)
    device = probabilities.device
    height, width = label_map.shape
    masks = torch.as_tensor(masks_np, device=device)
    foreground = 1.0 - probabilities[0].detach().float()
    areas = masks.flatten(1).sum(1)
    scores = (masks.float() * foreground).flatten(1).sum(1) / areas.clamp(min=1)
    keep = (areas >= min_pixels) & (scores >= score_floor)
    order = torch.argsort(scores[keep], descending=True, stable=True)
    masks = masks[keep][order]
    return {
        "boxes": masks_to_boxes(masks.cpu()).to(device),
        "labels": torch.as_tensor(region_labels, device=device)[keep][order].long(),
        "scores": scores[keep][order].float(),
        "masks": masks[:, None].float().reshape(-1, 1, height, width),
    }


def semantic_detections(
    logits: Tensor, score_floor: float = 0.0, min_pixels: int = 1, keep_label_map: bool = True
) -> list[dict[str, Tensor]]:
    """A batch of class logits → per image the argmax label map's lesions (:func:`label_map_to_instances`).

    Args:
        logits: (B, C + 1, H, W) class logits (softmax over channels).
        score_floor: lesions scoring below it are left out.
        min_pixels: lesions with fewer pixels are left out.
        keep_label_map: also return each image's ``label_map`` (H, W) int64, the argmax over classes that
            the pixel protocol (:class:`~malignet_bundle.metrics.pixel.SemanticPixelMetrics`) scores.

    Returns:
        One dict per image as :func:`label_map_to_instances` returns (plus ``label_map``).
    """
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    label_maps = probabilities.argmax(dim=1)
    detections = []
    for label_map, probs in zip(label_maps, probabilities, strict=True):
        detection = label_map_to_instances(label_map, probs, score_floor, min_pixels)
        if keep_label_map:
            detection["label_map"] = label_map
        detections.append(detection)
    return detections

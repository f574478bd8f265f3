"""Class label maps from instance annotations, for the semantic-segmentation baselines.

The semantic baselines of the related bone-scan work (a U-Net, a Double U-Net, a mean-teacher U-Net) learn one
class per pixel: 0 background, 1..C the class map's lesion classes. They train on the same chest crops and the
same instance annotations as MaligNet; :class:`InstanceLabelMapd` paints each crop's instance masks into a
label map after the augmentation moved them, and :func:`prepare_segmentation_batch` carries that map into the
trainer's targets beside the instances, so the lesion metrics still see the instances.

Where ground-truth lesions overlap, the first listed one wins, as in the evaluation's ground-truth semantic
maps (:func:`~malignet_bundle.metrics.records.semantic_map`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from malignet_bundle.engines.trainer import prepare_detection_batch

__all__ = ["LABEL_MAP_KEY", "instance_label_map", "InstanceLabelMapd", "prepare_segmentation_batch"]

LABEL_MAP_KEY = "label_map"


def instance_label_map(
    masks: torch.Tensor, labels: torch.Tensor, spatial_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Paint instance masks into a class label map; the first listed instance wins where they overlap.

    Args:
        masks: (N, H, W) instance masks (binary, or probabilities binarised at 0.5).
        labels: (N,) class of each instance, 1..C.
        spatial_shape: (H, W), needed only when there is no instance to take it from (N = 0 with a 1-D
            ``masks``); otherwise ``masks``' own.

    Returns:
        (H, W) int64 label map on ``masks``' device, 0 where no instance is.

    Raises:
        ValueError: when masks and labels disagree in number, or a label is below 1.
    """
    masks = torch.as_tensor(masks)
    labels = torch.as_tensor(labels, device=masks.device).long().flatten()
    if masks.dim() != 3:
        if spatial_shape is None or masks.numel():
            raise ValueError(f"instance masks are (N, H, W), got shape {tuple(masks.shape)}")
        masks = masks.reshape(0, *spatial_shape)
    if masks.shape[0] != labels.shape[0]:
        raise ValueError(f"{masks.shape[0]} instance masks but {labels.shape[0]} labels")
    if labels.numel() and int(labels.min()) < 1:
        raise ValueError(f"lesion labels start at 1 (0 is background), got {labels.tolist()}")
    label_map = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    # paint the last instance first, so that the first listed one is painted last and wins overlaps
    for index in range(masks.shape[0] - 1, -1, -1):
        label_map[masks[index] > 0.5] = labels[index]
    return label_map


class InstanceLabelMapd(MapTransform):
    """Add a (1, H, W) int64 class label map painted from an item's instance masks and labels.

    Put it after the geometric augmentation (the masks must already be where the image is) and after
    ``SelectItemsd``, which would drop the new key: ``configs/segmentation.json`` appends it to the training
    and validation chains.

    Args:
        keys: the instance-mask key(s), (N, H, W).
        label_key: the instances' class labels (N,).
        output_key: where the label map goes.
        allow_missing_keys: leave items without masks (unlabeled crops) unchanged instead of failing.
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        label_key: str = "labels",
        output_key: str = LABEL_MAP_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.output_key = label_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with ``output_key`` added; the input item is left as it was.

        Raises:
            KeyError: when an item has masks but no ``label_key``.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            if self.label_key not in d:
                raise KeyError(f"{self.label_key!r} is missing beside {key!r}: no classes to paint the label map")
            masks = torch.as_tensor(d[key])
            d[self.output_key] = instance_label_map(masks, torch.as_tensor(d[self.label_key]))[None]
        return d


def prepare_segmentation_batch(
    batchdata: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[list[torch.Tensor], list[dict[str, Any]] | None]:
    """:func:`~malignet_bundle.engines.trainer.prepare_detection_batch` plus each item's ``label_map``.

    The targets keep the instances (the lesion metrics read them) and gain the (1, H, W) int64 label map
    when the item has one; items without masks (unlabeled crops) still give ``targets`` None.

    Args:
        batchdata: an uncollated batch (list of item dicts) or one item.
        device: where the tensors go.
        non_blocking: asynchronous copies.
        kwargs: ignored (the engines' ``prepare_batch`` signature).

    Returns:
        (images, targets) as :func:`prepare_detection_batch`, targets with ``label_map`` where present.
    """
    items = [batchdata] if isinstance(batchdata, Mapping) else list(batchdata)
    images, targets = prepare_detection_batch(items, device, non_blocking)
    if targets is not None:
        for target, item in zip(targets, items, strict=True):
            if LABEL_MAP_KEY in item:
                label_map = torch.as_tensor(item[LABEL_MAP_KEY]).to(device=device, non_blocking=non_blocking)
                target[LABEL_MAP_KEY] = label_map.long()
    return images, targets

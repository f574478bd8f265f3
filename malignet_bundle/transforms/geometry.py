"""Chest crop and instance geometry as MONAI dictionary transforms.

``CropToChestd`` crops the whole-body view to its chest box and resizes it to the network's input size,
masks with it, and records the crop (``crop_box``, whole-body x0, y0, x1, y1). Its inverse for predictions,
``PasteFromChestd``, resizes predicted mask probabilities back to the crop box and pastes them into the whole
view; ``UnmirrorPosteriord`` undoes the posterior mirroring of ``transforms.io.SelectViewd``. Inference's
postprocessing (``configs/inference.json``) runs the two in that order, the reverse of the forward chain.
``BoxesFromMasksd`` re-derives boxes from masks after any geometric change and drops instances that left
the image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, SpatialCrop

__all__ = ["CropToChestd", "PasteFromChestd", "UnmirrorPosteriord", "BoxesFromMasksd", "DetectChestd", "masks_to_boxes"]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks → (N, 4) boxes (x0, y0, x1, y1), x1/y1 exclusive; empty masks give zeros."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    if masks.shape[0] == 0:
        return boxes
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    for i in range(masks.shape[0]):
        r, c = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
        if len(r):
            boxes[i] = torch.tensor([c[0], r[0], c[-1] + 1, r[-1] + 1], dtype=torch.float32)
    return boxes


class CropToChestd(MapTransform):
    """Crop image (and masks) to the chest box, then resize to ``spatial_size``.

    Args:
        keys: image key(s), (C, H, W).
        spatial_size: output (H, W) (Table 11: 320×320).
        box_key: key of the chest box (x0, y0, x1, y1) in the view's pixels (annotation or detector).
        mask_key: instance masks (N, H, W) cropped and resized with nearest neighbour, when present.
        margin: fraction of the box size added on every side.
        image_mode: interpolation of the image ("area" keeps count sums local, "bilinear").
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: tuple[int, int] | int = 320,
        box_key: str = "chest_box",
        mask_key: str = "masks",
        margin: float = 0.0,
        image_mode: str = "area",
    ) -> None:
        super().__init__(keys)
        size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
        self.spatial_size = (int(size[0]), int(size[1]))
        self.box_key, self.mask_key, self.margin = box_key, mask_key, margin
        self.resize_image = Resize(self.spatial_size, mode=image_mode)
        self.resize_mask = Resize(self.spatial_size, mode="nearest")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with cropped, resized images and masks and ``crop_box`` added."""
        d = dict(data)
        if self.box_key not in d:
            raise KeyError(f"no {self.box_key!r} in the item: give a chest box (annotation or chest detector)")
        first = d[self.first_key(d)]
        height, width = int(first.shape[-2]), int(first.shape[-1])
        x0, y0, x1, y1 = (float(v) for v in torch.as_tensor(d[self.box_key]).flatten()[:4])
        mx, my = self.margin * (x1 - x0), self.margin * (y1 - y0)
        left, top = max(int(np.floor(x0 - mx)), 0), max(int(np.floor(y0 - my)), 0)
        right, bottom = min(int(np.ceil(x1 + mx)), width), min(int(np.ceil(y1 + my)), height)
        if right - left < 2 or bottom - top < 2:
            raise ValueError(f"chest box {[x0, y0, x1, y1]} leaves no image inside {width}x{height}")
        crop = SpatialCrop(roi_start=[top, left], roi_end=[bottom, right])
        for key in self.key_iterator(d):
            d[key] = self.resize_image(crop(d[key]))
        if self.mask_key in d:
            masks = torch.as_tensor(d[self.mask_key])[:, top:bottom, left:right]
            if masks.shape[0]:
                d[self.mask_key] = self.resize_mask(masks.float()).as_tensor().round().to(torch.uint8)
            else:
                d[self.mask_key] = torch.zeros((0, *self.spatial_size), dtype=torch.uint8)
        d["crop_box"] = torch.tensor([left, top, right, bottom], dtype=torch.float32)
        return d


class PasteFromChestd(MapTransform):
    """Inverse of :class:`CropToChestd` for predicted instance masks: from the resized crop back to the whole view.

    Each (N, 1, h, w) map of mask probabilities over the network's input is resized (bilinear) to the size of
    the crop box, thresholded, and pasted at the box into an (N, H, W) boolean array of the whole view's size.
    The crop box itself becomes ``chest_box_key`` (x0, y0, x1, y1 as floats), the chest the network saw.

    Args:
        keys: mask probability key(s), (N, 1, h, w) tensors over the resized crop.
        reference_key: the whole view the crop was cut from; its last two dimensions give (H, W).
        crop_box_key: the crop ``CropToChestd`` recorded (x0, y0, x1, y1) in the view's pixels.
        chest_box_key: where the crop box goes, as a tuple of floats.
        mask_threshold: probability from which a pixel belongs to the instance.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "frame",
        crop_box_key: str = "crop_box",
        chest_box_key: str = "chest_box",
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(keys)
        self.reference_key, self.crop_box_key, self.chest_box_key = reference_key, crop_box_key, chest_box_key
        self.mask_threshold = float(mask_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with whole-view boolean masks (numpy) and the chest box."""
        d = dict(data)
        height, width = (int(s) for s in np.shape(d[self.reference_key])[-2:])
        left, top, right, bottom = (int(v) for v in torch.as_tensor(d[self.crop_box_key]).tolist())
        crop_size = (bottom - top, right - left)
        for key in self.key_iterator(d):
            probabilities = torch.as_tensor(d[key]).float().cpu()
            if probabilities.shape[0]:
                probabilities = F.interpolate(probabilities, size=crop_size, mode="bilinear")
            else:  # nothing found: interpolate refuses an empty batch
                probabilities = torch.zeros((0, 1, *crop_size))
            masks = np.zeros((probabilities.shape[0], height, width), dtype=bool)
            masks[:, top:bottom, left:right] = (probabilities[:, 0] >= self.mask_threshold).numpy()
            d[key] = masks
        d[self.chest_box_key] = (float(left), float(top), float(right), float(bottom))
        return d


class UnmirrorPosteriord(MapTransform):
    """Inverse of the posterior mirroring of ``transforms.io.SelectViewd``: back to the view as stored.

    Whether the view was mirrored is read from the ``mirrored`` meta entry ``SelectViewd`` gives the image;
    an image without it counts as mirrored when its view is posterior (``SelectViewd``'s default).

    Args:
        keys: (N, H, W) mask key(s) flipped left-right.
        image_key: the image that carries the ``mirrored`` meta entry.
        view_key: the view name, used when the image has no meta.
        box_keys: (x0, y0, x1, y1) boxes mirrored with the masks (e.g. the chest box).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        view_key: str = "view",
        box_keys: KeysCollection = ("chest_box",),
    ) -> None:
        super().__init__(keys)
        self.image_key, self.view_key = image_key, view_key
        self.box_keys = (box_keys,) if isinstance(box_keys, str) else tuple(box_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with masks and boxes in the stored orientation."""
        d = dict(data)
        mirrored = bool(getattr(d.get(self.image_key), "meta", {}).get("mirrored", d.get(self.view_key) == "posterior"))
        if not mirrored:
            return d
        width = None
        for key in self.key_iterator(d):
            d[key] = np.asarray(d[key])[:, :, ::-1].copy()
            width = d[key].shape[-1]
        for key in self.box_keys:
            if key in d:
                if width is None:
                    raise ValueError(f"cannot mirror {key!r} back without a mask key giving the view's width")
                x0, y0, x1, y1 = (float(v) for v in d[key])
                d[key] = (float(width - x1), y0, float(width - x0), y1)
        return d


class BoxesFromMasksd(MapTransform):
    """Recompute ``boxes`` from ``masks`` and drop instances smaller than ``min_pixels``.

    Args:
        keys: the mask key.
        box_key: output box key.
        label_key: labels filtered together with the masks.
        min_pixels: an instance with fewer mask pixels is dropped (left the crop, or vanished in resizing).
        max_instances: keep at most this many, largest first (Table 11: 100 ground-truth instances).
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        box_key: str = "boxes",
        label_key: str = "labels",
        min_pixels: int = 4,
        max_instances: int = 100,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key, self.label_key = box_key, label_key
        self.min_pixels, self.max_instances = min_pixels, max_instances

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with consistent masks, labels and boxes."""
        d = dict(data)
        for key in self.key_iterator(d):
            masks = torch.as_tensor(d[key])
            areas = masks.flatten(1).sum(1) if masks.shape[0] else torch.zeros(0)
            keep = torch.nonzero(areas >= self.min_pixels).flatten()
            keep = keep[torch.argsort(areas[keep], descending=True)][: self.max_instances].sort().values
            d[key] = masks[keep]
            if self.label_key in d:
                d[self.label_key] = torch.as_tensor(d[self.label_key])[keep]
            d[self.box_key] = masks_to_boxes(d[key])
        return d


class DetectChestd(MapTransform):
    """Fill ``chest_box`` from the chest detector for items whose annotation gave none (unlabeled scans).

    The detector is loaded once, lazily, from a weights file (``torch.load(weights_only=True)``), and runs
    on CPU so that cached data loading needs no GPU. Items that already carry a chest box keep it.

    Args:
        keys: the image key (one view, (1, H, W), intensities scaled to about 0–1).
        detector_path: chest detector weights (``scripts/train_chest_detector.py``).
        box_key: where the box goes.
    """

    def __init__(self, keys: KeysCollection, detector_path: str, box_key: str = "chest_box") -> None:
        super().__init__(keys)
        self.detector_path, self.box_key = detector_path, box_key
        self._detector = None

    def _load(self) -> torch.nn.Module:
        if self._detector is None:
            from malignet_bundle.networks.chest_detector import ChestDetector

            detector = ChestDetector()
            try:
                detector.load_state_dict(torch.load(self.detector_path, map_location="cpu", weights_only=True))
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    f"{self.detector_path}: chest detector weights not found; train them with "
                    "scripts/train_chest_detector.py"
                ) from e
            self._detector = detector.eval()
        return self._detector

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with a chest box."""
        d = dict(data)
        if self.box_key in d:
            return d
        image = d[self.first_key(d)]
        view = torch.as_tensor(image, dtype=torch.float32)[None, :1]
        d[self.box_key] = self._load()(view)[0]
        return d

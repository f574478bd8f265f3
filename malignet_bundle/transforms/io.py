"""Dictionary transforms that bring a datalist item from files to one anterior-oriented view with its lesions.

Order in a config: ``LoadImaged(reader=NMWholeBodyReader)`` → ``LoadAnnotationd`` → ``SelectViewd``.
Annotations are loaded against the stored pixels and mirrored together with the image, so a posterior
view's masks, boxes and chest box stay on its lesions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.class_map import ClassMap

__all__ = ["LoadAnnotationd", "SelectViewd"]


class LoadAnnotationd(MapTransform):
    """Load the item's lesion annotation into ``masks`` (N, H, W uint8), ``labels`` (N,), ``boxes`` (N, 4).

    Items without the label key (unlabeled scans) get no annotation keys, unless ``allow_missing_keys`` is
    False, in which case they raise. The chest box of the annotation, when present, goes to ``chest_box_key``.

    Args:
        keys: the label key (one).
        class_map: a :class:`ClassMap` or a ``{label: name}`` mapping.
        image_key: key of the loaded image (shape is checked against it).
        view_key: key holding the view name of the item (picks the image of a multi-view COCO file).
        dataset_dir: prefix for relative annotation paths.
        chest_box_key: output key of the chest box (x0, y0, x1, y1).
        allow_missing_keys: skip items without a label.
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_map: ClassMap | Mapping,
        image_key: str = "image",
        view_key: str = "view",
        dataset_dir: str | None = None,
        chest_box_key: str = "chest_box",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.class_map = class_map if isinstance(class_map, ClassMap) else ClassMap(class_map)
        self.image_key, self.view_key = image_key, view_key
        self.dataset_dir = Path(dataset_dir) if dataset_dir else None
        self.chest_box_key = chest_box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add annotation keys to a copy of ``data``."""
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            if self.dataset_dir is not None and not path.is_absolute():
                path = self.dataset_dir / path
            image = d[self.image_key]
            shape = tuple(int(s) for s in image.shape[-2:])
            image_file = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
            ann = load_annotation(
                path, shape, view=d.get(self.view_key), image_file=image_file, class_map=self.class_map
            )
            d["masks"] = torch.from_numpy(ann.masks.astype(np.uint8))
            d["labels"] = torch.from_numpy(ann.labels(self.class_map))
            d["boxes"] = torch.from_numpy(ann.boxes())
            if ann.chest_box is not None:
                d[self.chest_box_key] = torch.tensor(ann.chest_box, dtype=torch.float32)
        return d


class SelectViewd(MapTransform):
    """Keep the frame of the item's view and mirror a posterior view to the anterior orientation.

    Args:
        keys: image key(s) holding the (n_views, H, W) frames from ``NMWholeBodyReader``.
        view_key: key holding the view name; when absent the first frame is taken.
        mirror_posterior: flip posterior frames left-right (and masks, boxes, chest box with them).
        mask_key, box_key, chest_box_key: annotation keys to mirror when present.
    """

    def __init__(
        self,
        keys: KeysCollection,
        view_key: str = "view",
        mirror_posterior: bool = True,
        mask_key: str = "masks",
        box_key: str = "boxes",
        chest_box_key: str = "chest_box",
    ) -> None:
        super().__init__(keys)
        self.view_key, self.mirror_posterior = view_key, mirror_posterior
        self.mask_key, self.box_key, self.chest_box_key = mask_key, box_key, chest_box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with one view per image key."""
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            views = list(image.meta.get("views", [])) if isinstance(image, MetaTensor) else []
            view = d.get(self.view_key) or (views[0] if views else "anterior")
            if views and view not in views:
                name = image.meta.get("filename_or_obj", key) if isinstance(image, MetaTensor) else key
                raise ValueError(f"{name}: view {view!r} not in file (has {views})")
            index = views.index(view) if views else 0
            frame = image[index : index + 1]
            mirror = self.mirror_posterior and view == "posterior"
            if mirror:
                frame = torch.flip(frame, dims=(-1,))
            if isinstance(frame, MetaTensor):
                frame.meta["view"] = view
                frame.meta["mirrored"] = mirror
            d[key] = frame
            d[self.view_key] = view
            if mirror:
                width = frame.shape[-1]
                if self.mask_key in d:
                    d[self.mask_key] = torch.flip(d[self.mask_key], dims=(-1,))
                for box_key in (self.box_key, self.chest_box_key):
                    if box_key in d:
                        box = d[box_key].clone()
                        box[..., 0], box[..., 2] = width - d[box_key][..., 2], width - d[box_key][..., 0]
                        d[box_key] = box
        return d

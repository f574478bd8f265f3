"""Dictionary transforms that bring a datalist item from files to one anterior-oriented view with its lesions.

Order in a config: ``LoadNMViewd`` → ``LoadAnnotationd`` → ``SelectViewd``. Annotations are loaded against the
stored pixels and mirrored together with the image, so a posterior view's masks, boxes and chest box stay on
its lesions.

Why ``LoadNMViewd`` and not ``LoadImaged(reader=NMWholeBodyReader())``: MONAI's ``LoadImage`` registers its
default readers (ITK, Nibabel, NumPy, Pydicom, PIL) beside the one it is given, and when the given reader
raises it tries the others. A file the NM reader refuses (a CT, a 3-frame file, a short pixel buffer) was then
loaded anyway by another reader, and failed later with a misleading reason (an annotation size mismatch) or
not at all. ``LoadNMViewd`` passes the NM reader as the runtime reader, which ``LoadImage`` calls alone, so its
:class:`~malignet_bundle.data.nm_dicom.DicomInputError` (file and reason) is what surfaces.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

from malignet_bundle.data.annotations import AnnotationError, load_annotation
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.reader import NMWholeBodyReader

__all__ = ["LoadNMViewd", "LoadAnnotationd", "SelectViewd"]


class LoadNMViewd(LoadImaged):
    """Load whole-body NM files with :class:`NMWholeBodyReader` alone: no fallback to MONAI's other readers.

    The image is the (n_views, rows, cols) MetaTensor of the reader; a file it refuses raises its
    ``DicomInputError`` naming the file and the reason.

    Args:
        keys: image key(s).
        reader: the NM reader to use (a default one when None).
        allow_missing_keys: skip items without the key.
        kwargs: further ``LoadImaged`` arguments (``dtype``, ``meta_keys``, ...); ``image_only`` is True unless
            given.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: NMWholeBodyReader | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        self.nm_reader = reader if reader is not None else NMWholeBodyReader()
        kwargs.setdefault("image_only", True)
        super().__init__(keys, reader=self.nm_reader, allow_missing_keys=allow_missing_keys, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: NMWholeBodyReader | None = None) -> dict[Hashable, Any]:
        """Load every key of ``data`` with the NM reader (``reader`` overrides it for this call)."""
        return super().__call__(data, reader if reader is not None else self.nm_reader)


class LoadAnnotationd(MapTransform):
    """Load the item's lesion annotation into ``masks`` (N, H, W uint8), ``labels`` (N,), ``boxes`` (N, 4).

    Items without the label key (unlabeled scans) get no annotation keys, unless ``allow_missing_keys`` is
    False, in which case they raise. The chest box of the annotation, when present, goes to ``chest_box_key``.
    An annotation with findings (an empty mask, a class id absent from its label image) raises
    ``AnnotationError`` unless ``strict`` is False: training on it would silently lose a lesion the annotator
    meant to mark, and the data check reports the same finding as an error.

    Args:
        keys: the label key (one).
        class_map: a :class:`ClassMap` or a ``{label: name}`` mapping.
        image_key: key of the loaded image (shape is checked against it).
        view_key: key holding the view name of the item (picks the image of a multi-view COCO file).
        dataset_dir: prefix for relative annotation paths.
        chest_box_key: output key of the chest box (x0, y0, x1, y1).
        allow_missing_keys: skip items without a label.
        strict: raise on the annotation's findings instead of dropping the instances concerned.
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
        strict: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.strict = strict
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
            if self.strict and ann.problems:
                raise AnnotationError(path, "; ".join(ann.problems))
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

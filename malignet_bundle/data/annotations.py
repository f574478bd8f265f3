"""Lesion annotations of one view: import from COCO, LabelMe and instance-label images, and export to them.

All formats describe the *stored* pixels of a view (for a posterior view, the image as acquired, before
mirroring), with x = column and y = row. Polygons are rasterised by pycocotools for both COCO and LabelMe,
so one polygon gives the same mask whichever file it came from.

Instance-label images hold instance ids (0 background); the class of each id comes from a sidecar
``<file>.classes.json`` (``{"1": "malignant", …}``). NIfTI files store the view as (x=column, y=row), the
orientation ITK and nibabel viewers expect for a 2D image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from skimage import measure

from malignet_bundle.atomic_io import save_nifti_atomic, write_atomic, write_json_atomic
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.nm_dicom import InputFileError

__all__ = [
    "AnnotationError",
    "ViewAnnotation",
    "load_annotation",
    "to_coco_image",
    "coco_document",
    "to_labelme",
    "write_instance_label_image",
    "mask_to_polygons",
]


class AnnotationError(InputFileError):
    """An annotation file that cannot be used."""


@dataclass
class ViewAnnotation:
    """Instances of one view.

    Attributes:
        masks: bool array (N, rows, cols).
        class_names: class name of each instance, as in the source file.
        chest_box: (x0, y0, x1, y1) in pixels, or None when the file has none.
        problems: non-fatal findings (e.g. empty masks dropped), for the data check.
    """

    masks: np.ndarray
    class_names: list[str]
    chest_box: tuple[float, float, float, float] | None = None
    problems: list[str] = field(default_factory=list)

    def labels(self, class_map: ClassMap) -> np.ndarray:
        """Integer labels through ``class_map`` (``KeyError`` on an unknown name)."""
        return np.array([class_map.label(n) for n in self.class_names], dtype=np.int64)

    def boxes(self) -> np.ndarray:
        """Tight (x0, y0, x1, y1) box of each mask, with x1/y1 exclusive (torchvision convention)."""
        out = np.zeros((len(self.masks), 4), dtype=np.float32)
        for i, m in enumerate(self.masks):
            rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            if len(rows):
                out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        return out


def json_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary (H, W) mask, as JSON types (``pycocotools.mask.decode`` reads it)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def to_json_types(value: Any) -> Any:
    """``value`` with mappings, tuples, numpy scalars/arrays and paths turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): to_json_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_types(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_types(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --------------------------------------------------------------------------------------------- export


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5) -> list[list[float]]:
    """Outer contours of ``mask`` as flat [x0, y0, x1, y1, …] polygons on pixel edges."""
    padded = np.pad(mask.astype(np.uint8), 1)
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance) - 1  # undo padding
        if len(contour) >= 3:
            # find_contours walks pixel centres at the 0.5 level; +0.5 moves to the pixel-edge convention.
            polygons.append([float(v) for rc in contour for v in (rc[1] + 0.5, rc[0] + 0.5)])
    return polygons


def to_coco_image(
    image_id: int,
    file_name: str,
    view: str,
    shape: tuple[int, int],
    masks: np.ndarray,
    class_names: list[str],
    class_map: ClassMap,
    chest_box: tuple[float, float, float, float] | None,
    first_annotation_id: int = 1,
) -> tuple[dict, list[dict]]:
    """COCO image entry and its annotations (masks as compressed RLE) for one view."""
    image = {"id": image_id, "file_name": file_name, "view": view, "height": int(shape[0]), "width": int(shape[1])}
    if chest_box is not None:
        x0, y0, x1, y1 = (float(v) for v in chest_box)
        image["chest_bbox"] = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
    annotations = []
    for k, (m, name) in enumerate(zip(masks, class_names, strict=True)):
        rle = json_rle(m)
        annotations.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": class_map.label(name),
                "segmentation": rle,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return image, annotations


def coco_document(images: list[dict], annotations: list[dict], class_map: ClassMap) -> dict:
    """A COCO instances document with the categories of ``class_map``."""
    categories = [{"id": i, "name": n, "supercategory": "lesion"} for i, n in enumerate(class_map.names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_labelme(image_path: str, shape: tuple[int, int], masks: np.ndarray, class_names: list[str]) -> dict:
    """LabelMe document with one polygon per outer contour of each instance (group_id = instance)."""
    shapes = []
    for k, (m, name) in enumerate(zip(masks, class_names, strict=True)):
        for poly in mask_to_polygons(m):
            points = [[poly[i], poly[i + 1]] for i in range(0, len(poly), 2)]
            shapes.append({"label": name, "points": points, "group_id": k + 1, "shape_type": "polygon", "flags": {}})
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(shape[0]),
        "imageWidth": int(shape[1]),
    }


def write_instance_label_image(
    path: str | os.PathLike, masks: np.ndarray, class_names: list[str], spacing_mm: tuple[float, float] = (1.0, 1.0)
) -> None:
    """Write masks as an instance-label PNG or NIfTI plus its ``.classes.json`` sidecar (later masks win overlaps)."""
    path = Path(path)
    label = np.zeros(masks.shape[1:], dtype=np.uint16)
    for k, m in enumerate(masks):
        label[m] = k + 1
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if suffix == ".png":
        from PIL import Image

        write_atomic(path, lambda tmp: Image.fromarray(label).save(tmp, format="PNG"))
    elif suffix in (".nii", ".nii.gz"):
        import nibabel as nib

        affine = np.diag([spacing_mm[1], spacing_mm[0], 1.0, 1.0])
        save_nifti_atomic(nib.Nifti1Image(label.T[..., None], affine), path)
    else:
        raise ValueError(f"{path}: instance-label images must be .png, .nii or .nii.gz")
    write_json_atomic({str(k + 1): n for k, n in enumerate(class_names)}, _sidecar(path))


def _sidecar(path: Path) -> Path:
    base = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return path.with_name(base + ".classes.json")


# --------------------------------------------------------------------------------------------- import


@lru_cache(maxsize=64)
def _read_json_cached(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def _read_json(path: Path) -> Any:
    try:
        return _read_json_cached(str(path), path.stat().st_mtime)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"not valid JSON ({e})") from e


def _coordinates(path: Path, values: Any, what: str) -> np.ndarray:
    """``values`` as a flat float array, refusing non-numbers and NaN/infinite values.

    pycocotools is C code that trusts its input: a NaN or infinite coordinate made it allocate without bound
    (the process was killed) or crash, so nothing reaches it unchecked.
    """
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise AnnotationError(path, f"{what}: coordinates are not numbers ({e})") from e
    bad = ~np.isfinite(array)
    if bad.any():
        raise AnnotationError(path, f"{what}: {int(bad.sum())} missing (null), NaN or infinite coordinate(s)")
    return array


def _image_size(path: Path, doc: Mapping, keys: tuple[str, str], shape: tuple[int, int]) -> tuple[int, int]:
    h, w = (doc.get(k, default) for k, default in zip(keys, shape, strict=True))
    try:
        size = int(h), int(w)
    except (TypeError, ValueError, OverflowError) as e:
        raise AnnotationError(path, f"image size {keys[1]}={w!r} {keys[0]}={h!r} is not a pair of integers") from e
    if size != tuple(shape):
        raise AnnotationError(
            path, f"annotation size {size[1]}x{size[0]} does not match the image size {shape[1]}x{shape[0]}"
        )
    return size


def _check_chest_box(path: Path, box: tuple[float, ...], shape: tuple[int, int], what: str) -> tuple[float, ...]:
    # A box that reaches past the image edge is common (a rectangle dragged beyond it) and the crop clips it;
    # a NaN, empty or wholly outside box would give an empty or undefined crop.
    x0, y0, x1, y1 = (float(v) for v in _coordinates(path, box, what))
    h, w = shape
    if not (x0 < x1 and y0 < y1 and x1 > 0 and y1 > 0 and x0 < w and y0 < h):
        raise AnnotationError(
            path, f"{what} ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) is empty or outside the {w}x{h} image"
        )
    return x0, y0, x1, y1


def _polygons_to_mask(path: Path, polygons: list[list[float]], shape: tuple[int, int], what: str) -> np.ndarray:
    h, w = shape
    if not isinstance(polygons, list) or not all(isinstance(p, (list, tuple)) for p in polygons):
        raise AnnotationError(path, f"{what}: polygons must be lists of x, y numbers")
    checked = []
    for poly in polygons:
        coords = _coordinates(path, poly, what)
        if len(coords) % 2:
            raise AnnotationError(path, f"{what}: polygon with an odd number of coordinates ({len(coords)})")
        xs, ys = coords[0::2], coords[1::2]
        if len(xs) < 3:
            raise AnnotationError(path, f"{what}: polygon with fewer than 3 points")
        if xs.min() < -0.5 or ys.min() < -0.5 or xs.max() > w + 0.5 or ys.max() > h + 0.5:
            raise AnnotationError(
                path,
                f"{what}: polygon outside the {w}x{h} image "
                f"(x {xs.min():.1f}..{xs.max():.1f}, y {ys.min():.1f}..{ys.max():.1f})",
            )
        checked.append(coords.tolist())
    rles = mask_utils.frPyObjects(checked, h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _rle_to_mask(path: Path, seg: dict, shape: tuple[int, int], what: str) -> np.ndarray:
    h, w = shape
    if list(seg.get("size", [])) != [h, w]:
        raise AnnotationError(path, f"{what}: RLE size {seg.get('size')} does not match {h}x{w}")
    counts = seg.get("counts")
    if isinstance(counts, list):
        # uncompressed RLE: run lengths, which must be whole, non-negative and cover the image exactly
        runs = _coordinates(path, counts, what)
        if (runs < 0).any() or (runs != np.round(runs)).any() or runs.sum() != h * w:
            raise AnnotationError(path, f"{what}: RLE counts must be non-negative integers summing to {h}x{w}={h * w}")
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(r) for r in runs]}, h, w)
    elif isinstance(counts, (str, bytes)):
        rle = {"size": [h, w], "counts": counts}
    else:
        raise AnnotationError(path, f"{what}: RLE counts must be a list or a string, got {type(counts).__name__}")
    try:
        mask = mask_utils.decode(rle)
    except (ValueError, TypeError, OverflowError) as e:
        raise AnnotationError(path, f"{what}: RLE cannot be decoded ({e})") from e
    return mask.astype(bool)


def _load_coco(path: Path, shape: tuple[int, int], view: str | None, image_file: str | None) -> ViewAnnotation:
    doc = _read_json(path)
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise AnnotationError(path, "COCO file needs 'images' and 'annotations'")
    images = doc["images"]
    if view is not None:
        images = [im for im in images if im.get("view", view) == view]
    if image_file is not None and len(images) > 1:
        images = [im for im in images if Path(im.get("file_name", "")).name == Path(image_file).name]
    if len(images) != 1:
        raise AnnotationError(path, f"{len(images)} COCO images match view={view!r} file={image_file!r}; need 1")
    image = images[0]
    h, w = _image_size(path, image, ("height", "width"), shape)
    categories = {c["id"]: c["name"] for c in doc.get("categories", [])}
    masks, names, problems = [], [], []
    for ann in (a for a in doc["annotations"] if a["image_id"] == image["id"]):
        what = f"annotation {ann.get('id')}"
        if ann.get("category_id") not in categories:
            raise AnnotationError(path, f"{what}: category_id {ann.get('category_id')} not in 'categories'")
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            mask = _rle_to_mask(path, seg, (h, w), what)
        elif isinstance(seg, list) and seg:
            mask = _polygons_to_mask(path, seg, (h, w), what)
        else:
            raise AnnotationError(path, f"{what}: no segmentation")
        if not mask.any():
            problems.append(f"{what}: empty mask (covers no pixel)")
            continue
        masks.append(mask)
        names.append(categories[ann["category_id"]])
    chest = image.get("chest_bbox")
    chest_box = None
    if chest:
        x, y, bw, bh = _coordinates(path, chest, "chest_bbox")
        chest_box = _check_chest_box(path, (x, y, x + bw, y + bh), (h, w), "chest_bbox")
    return ViewAnnotation(_stack(masks, shape), names, chest_box, problems)


def _load_labelme(path: Path, shape: tuple[int, int]) -> ViewAnnotation:
    doc = _read_json(path)
    h, w = _image_size(path, doc, ("imageHeight", "imageWidth"), shape)
    groups: dict[Any, tuple[str, list]] = {}
    chest_box = None
    for k, s in enumerate(doc.get("shapes", [])):
        points = s.get("points", [])
        if s.get("label", "").lower() == "chest" and s.get("shape_type") == "rectangle":
            coords = _coordinates(path, points, f"shape {k} (chest rectangle)")
            if len(coords) != 4:
                raise AnnotationError(path, f"shape {k}: a chest rectangle has 2 points, got {len(coords) / 2:g}")
            x0, y0, x1, y1 = coords
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            chest_box = _check_chest_box(path, box, (h, w), f"shape {k} (chest rectangle)")
            continue
        if s.get("shape_type", "polygon") != "polygon":
            raise AnnotationError(path, f"shape {k}: shape_type {s.get('shape_type')!r} unsupported (use polygon)")
        key = s.get("group_id") if s.get("group_id") is not None else f"shape{k}"
        name, polys = groups.setdefault(key, (s.get("label", ""), []))
        if name != s.get("label", ""):
            raise AnnotationError(path, f"shape {k}: group {key} mixes labels {name!r} and {s.get('label')!r}")
        if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise AnnotationError(path, f"shape {k}: points must be [x, y] pairs")
        polys.append(_coordinates(path, points, f"shape {k}").tolist())
    masks, names, problems = [], [], []
    for key, (name, polys) in groups.items():
        mask = _polygons_to_mask(path, polys, (h, w), f"shape group {key}")
        if not mask.any():
            problems.append(f"shape group {key}: empty mask (covers no pixel)")
            continue
        masks.append(mask)
        names.append(name)
    return ViewAnnotation(_stack(masks, shape), names, chest_box, problems)


def _load_instance_image(path: Path, shape: tuple[int, int]) -> ViewAnnotation:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        data = np.asarray(nib.load(str(path)).dataobj)
        data = np.squeeze(data)
        if data.ndim != 2:
            raise AnnotationError(path, f"instance-label NIfTI must be 2D, has shape {data.shape}")
        label = data.T
    else:
        from PIL import Image

        with Image.open(path) as im:
            label = np.asarray(im)
        if label.ndim != 2:
            raise AnnotationError(path, f"instance-label image must be single-channel, has shape {label.shape}")
    if label.shape != tuple(shape):
        raise AnnotationError(
            path,
            f"annotation size {label.shape[1]}x{label.shape[0]} does not match the image size {shape[1]}x{shape[0]}",
        )
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise AnnotationError(path, f"no class sidecar {sidecar.name} naming the class of each instance id")
    classes = _read_json(sidecar)
    ids = [int(i) for i in np.unique(label) if i != 0]
    missing = [i for i in ids if str(i) not in classes]
    if missing:
        raise AnnotationError(path, f"instance ids {missing} have no class in {sidecar.name}")
    problems = [
        f"instance {i}: listed in {sidecar.name} but absent from the image (empty mask)"
        for i in map(int, classes)
        if i not in ids
    ]
    masks = [label == i for i in ids]
    return ViewAnnotation(_stack(masks, shape), [classes[str(i)] for i in ids], None, problems)


def _stack(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)


def load_annotation(
    path: str | os.PathLike,
    shape: tuple[int, int],
    view: str | None = None,
    image_file: str | None = None,
    class_map: ClassMap | None = None,
) -> ViewAnnotation:
    """Load the lesion instances of one view from a COCO, LabelMe or instance-label file.

    Args:
        path: annotation file. ``.json`` is COCO when it has ``images``/``annotations``, else LabelMe;
            ``.png``, ``.nii``, ``.nii.gz`` are instance-label images with a ``.classes.json`` sidecar.
        shape: (rows, cols) of the stored view the annotation must match.
        view: which view of a multi-image COCO file (its images carry a ``view`` field).
        image_file: image path, to pick the COCO image by file name when several share the view.
        class_map: when given, every class name must be in it.

    Raises:
        AnnotationError: missing file, unknown format, size mismatch, polygon outside the image, NaN or
            infinite coordinates, an RLE that does not cover the image, a chest box that is empty or outside
            the image, unknown class name, or a malformed document.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    try:
        if path.suffix == ".json" and not path.name.endswith(".classes.json"):
            doc = _read_json(path)
            if isinstance(doc, dict) and "images" in doc:
                result = _load_coco(path, shape, view, image_file)
            elif isinstance(doc, dict) and "shapes" in doc:
                result = _load_labelme(path, shape)
            else:
                raise AnnotationError(path, "JSON is neither COCO (images/annotations) nor LabelMe (shapes)")
        elif path.name.endswith((".png", ".nii", ".nii.gz")):
            result = _load_instance_image(path, shape)
        else:
            raise AnnotationError(path, "unsupported annotation format (COCO/LabelMe .json, .png, .nii, .nii.gz)")
    except AnnotationError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        # a document of the right kind but the wrong structure (a missing key, a string where a list belongs)
        raise AnnotationError(path, f"malformed annotation document ({type(e).__name__}: {e})") from e
    if class_map is not None:
        unknown = sorted({n for n in result.class_names if n not in class_map})
        if unknown:
            raise AnnotationError(path, f"unknown class names {unknown}; class map has {class_map.names}")
    return result

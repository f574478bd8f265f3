"""Class label maps of a whole study: what MONAI Label shows an annotator, and what comes back as ground truth.

A label map has the stored pixel array's shape, (frames, rows, columns), with the lesion class label
(``ClassMap`` ids, 0 = background) of every pixel. It is saved as NIfTI in the bundle's instance-image
convention (voxel axes column, row, frame; spacing in mm from the DICOM). Instances do not survive a class
map, so on the way back each connected region of one class becomes one lesion; touching lesions of the
same class merge, which an annotator can undo by leaving a background gap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from malignet_bundle.atomic_io import save_nifti_atomic
from malignet_bundle.outputs.prediction import StudyPrediction

__all__ = ["study_label_map", "write_label_map", "read_label_map", "label_map_instances"]


def study_label_map(prediction: StudyPrediction, frames: int) -> np.ndarray:
    """Paint every view's lesions into a (frames, rows, columns) uint8 class map; higher scores win overlaps.

    Args:
        prediction: the study's lesions, masks in stored-frame pixels.
        frames: frames in the stored pixel array (views of other files of the study are not painted).
    """
    if not prediction.views:
        raise ValueError(f"study {prediction.study_id} has no views")
    rows, columns = prediction.views[0].image.shape
    label_map = np.zeros((frames, rows, columns), dtype=np.uint8)
    for view in prediction.views:
        if view.frame_index >= frames:
            raise ValueError(f"view {view.view} is frame {view.frame_index}, beyond the {frames} frames")
        for k in np.argsort(view.scores, kind="stable"):  # lowest first, so the best lesion is painted last
            label_map[view.frame_index][view.masks[k]] = int(view.labels[k])
    return label_map


def write_label_map(label_map: np.ndarray, spacing_mm: tuple[float, float], path: str | os.PathLike) -> Path:
    """Save a (frames, rows, columns) label map as NIfTI through a temporary file; returns the path.

    Args:
        label_map: class per pixel.
        spacing_mm: (row, column) pixel spacing.
        path: ``.nii`` or ``.nii.gz`` file.
    """
    import nibabel as nib

    path = Path(path)
    if label_map.ndim != 3:
        raise ValueError(f"a study label map is (frames, rows, columns), got shape {label_map.shape}")
    affine = np.diag([float(spacing_mm[1]), float(spacing_mm[0]), 1.0, 1.0])
    return save_nifti_atomic(
        nib.Nifti1Image(np.ascontiguousarray(label_map.transpose(2, 1, 0)).astype(np.uint8), affine), path
    )


def read_label_map(path: str | os.PathLike, shape: tuple[int, int, int]) -> np.ndarray:
    """Read a label map written by :func:`write_label_map` (or edited and saved back) as (frames, rows, columns).

    Raises:
        ValueError: naming the file, when it is not a 3D map of the study's ``shape`` or holds non-integer
            or negative values.
    """
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise ValueError(f"{path}: not a readable NIfTI label map ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ValueError(f"{path}: a label map is 3D (columns, rows, frames), got shape {data.shape}")
    label_map = data.transpose(2, 1, 0)
    if label_map.shape != tuple(shape):
        raise ValueError(f"{path}: label map shape {label_map.shape} does not match the study's {tuple(shape)}")
    if np.any(label_map < 0) or not np.allclose(label_map, np.round(label_map)):
        raise ValueError(f"{path}: label values must be non-negative class ids")
    return label_map.astype(np.int64)


def label_map_instances(frame_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion instances of one frame's class map: one per 8-connected region of one class.

    Returns:
        ``masks`` (N, rows, columns) bool and ``labels`` (N,) class ids, ordered by class then region.
    """
    masks, labels = [], []
    for label in (int(v) for v in np.unique(frame_labels) if v != 0):
        regions, count = ndimage.label(frame_labels == label, structure=np.ones((3, 3), dtype=bool))
        for region in range(1, count + 1):
            masks.append(regions == region)
            labels.append(label)
    if not masks:
        return np.zeros((0, *frame_labels.shape), dtype=bool), np.zeros((0,), dtype=np.int64)
    return np.stack(masks), np.asarray(labels, dtype=np.int64)

"""What inference hands to the output writers: lesions of one study in whole-body stored-pixel coordinates.

Coordinates are those of the frame as stored in the DICOM file (row 0 at the top, column 0 at the left of the
stored matrix; a posterior view is *not* mirrored here), so a mask pixel ``[r, c]`` is pixel ``(r, c)`` of
frame ``frame_index`` of ``source_path``. Boxes are ``(x0, y0, x1, y1)`` with exclusive maxima.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from pydicom.dataset import Dataset

__all__ = ["ViewPrediction", "StudyPrediction"]


@dataclass
class ViewPrediction:
    """Lesions found in one view of a study.

    Attributes:
        view: "anterior" or "posterior".
        frame_index: 0-based frame of the source file holding this view.
        image: (H, W) counts of the frame as stored.
        masks: (N, H, W) bool instance masks in stored-pixel coordinates.
        labels: (N,) class labels 1…C.
        scores: (N,) detection scores in [0, 1].
        chest_box: (x0, y0, x1, y1) chest crop the network saw, in stored-pixel coordinates.
    """

    view: str
    frame_index: int
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    chest_box: tuple[float, float, float, float]

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) tight ``(x0, y0, x1, y1)`` boxes of the masks, exclusive maxima; zeros for an empty mask."""
        from malignet_bundle.transforms.geometry import masks_to_boxes

        return masks_to_boxes(torch.as_tensor(np.asarray(self.masks, dtype=bool))).numpy()


@dataclass
class StudyPrediction:
    """Lesions of one whole-body study (one NM file, or one file per view).

    Attributes:
        study_id: name the outputs are written under (the patient or file stem).
        source_paths: the NM file of each view, in the order of ``views``.
        datasets: header of each view's source file (pixel data may be absent), in the order of ``views``.
        spacing: (row, col) pixel spacing in mm.
        views: one :class:`ViewPrediction` per view.
    """

    study_id: str
    source_paths: list[str | os.PathLike]
    datasets: list[Dataset]
    spacing: tuple[float, float]
    views: list[ViewPrediction] = field(default_factory=list)

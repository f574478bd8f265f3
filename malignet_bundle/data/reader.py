"""MONAI ``ImageReader`` for whole-body NM DICOM, so ``LoadImage(reader=NMWholeBodyReader())`` works in configs.

Why not MONAI's ``PydicomReader``: it decodes NM pixels but, NM having no ImagePositionPatient /
ImageOrientationPatient, it reports 1 mm spacing instead of ``PixelSpacing``; lesion areas in mm² depend
on the real spacing. It also does not know which frame is which view.

In configs use it through :class:`malignet_bundle.transforms.io.LoadNMViewd`: ``LoadImage(reader=...)``
falls back to MONAI's other readers when this one refuses a file, and those load what it refused (a CT, a
3-frame file, a short pixel buffer) without its checks. What it refuses, and why: :mod:`malignet_bundle.data.nm_dicom`.

Output: channel-first array (n_views, rows, cols), row-major like the DICOM pixel matrix (no i/j swap);
the affine maps (row, col) to mm with the header's PixelSpacing. Meta keys added: ``views``,
``view_source``, ``spacing`` and the patient/study identifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from malignet_bundle.data.nm_dicom import NMViews, read_nm_views

__all__ = ["NMWholeBodyReader"]


class NMWholeBodyReader(ImageReader):
    """Read whole-body NM DICOM files (single- or multi-frame, compressed or not) with their views.

    Args:
        suffixes: file suffixes accepted by :meth:`verify_suffix`; files without a suffix are accepted too,
            as PACS exports often have none.
    """

    def __init__(self, suffixes: Sequence[str] = (".dcm", ".dicom", ".ima")) -> None:
        super().__init__()
        self.suffixes = tuple(s.lower() for s in suffixes)

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """Whether every file name has a DICOM suffix or none."""
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(n).suffix.lower() in self.suffixes or Path(n).suffix == "" for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> NMViews | list[NMViews]:
        """Read one file or several (each its own study); errors name the file (``DicomInputError``)."""
        if isinstance(data, (str, Path)):
            return read_nm_views(data)
        items = [read_nm_views(p) for p in data]
        return items if len(items) > 1 else items[0]

    def get_data(self, img: NMViews | list[NMViews]) -> tuple[np.ndarray, dict]:
        """Return (frames, meta) for one file; several files must share a shape and are stacked as channels."""
        studies = img if isinstance(img, list) else [img]
        frames = np.concatenate([s.frames for s in studies], axis=0)
        first = studies[0]
        row_sp, col_sp = first.spacing
        affine = np.diag([row_sp, col_sp, 1.0])
        ds = first.dataset
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(frames.shape[1:]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
            MetaKeys.SPACE: SpaceKeys.LPS,
            "views": [v for s in studies for v in s.views],
            "view_source": first.view_source,
            "spacing": [row_sp, col_sp],
            "PatientID": str(ds.get("PatientID", "")),
            "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
            "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "SOPClassUID": str(ds.get("SOPClassUID", "")),
        }
        return frames, meta

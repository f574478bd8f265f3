"""What the MONAI Label app lets in: study ids, label tags, study and label files, and the server's host.

MONAI Label 0.8.5's local datastore builds its paths from the ids and tags of requests
(``<studies>/<id><ext>``, ``<studies>/labels/<tag>/<id><ext>``) and copies uploads there unchecked, and its
infer endpoint opens any path that exists on the server. The app runs every id, tag and uploaded file
through these checks before the datastore reads or writes a file.

The module needs only the standard library at import time (numpy, nibabel and pydicom when a file is
checked), so the bundle's environment can test it as it is.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

__all__ = [
    "Refused",
    "STUDY_SUFFIX",
    "LABEL_SUFFIXES",
    "check_study_id",
    "check_tag",
    "check_inside",
    "file_suffix",
    "study_shape",
    "check_label_file",
    "explicit_host",
]

# what a study and a label file are called in the datastore (the bundle reads NM DICOM and NIfTI maps)
STUDY_SUFFIX = ".dcm"
LABEL_SUFFIXES = (".nii.gz", ".nii")
# a file name's limit on common filesystems is 255 bytes; leave room for the suffix and a temporary prefix
NAME_MAX = 200
# MONAI Label's tags are words ("final", "original"): a tag is one folder name, so nothing else is needed
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class Refused(ValueError):
    """A request the app refuses: the HTTP status it answers with and the reason it gives.

    Args:
        status: 400 (malformed id or tag), 403, 404 (no such study), 409 (would overwrite), 415 (wrong file
            type) or 422 (a file that cannot be used).
        reason: what is wrong, for the client.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_study_id(value: object, what: str = "study id") -> str:
    """A study id that is one plain file name: returned as it is, or :class:`Refused` (400) saying why.

    Refused: anything but a non-empty string, absolute paths, path separators (slash, backslash), drive or
    stream colons, ``..`` anywhere, a leading ``.`` (``.``, ``..``, hidden files), control characters, and
    names longer than 200 characters.
    """
    if not isinstance(value, str) or not value:
        raise Refused(400, f"{what} is missing or empty")
    shown = repr(value[:80])
    if os.path.isabs(value) or value.startswith(("/", "\\")):
        raise Refused(400, f"{what} {shown} is an absolute path: give the id of a study in the datastore")
    if "/" in value or "\\" in value:
        raise Refused(400, f"{what} {shown} contains a path separator")
    if ".." in value:
        raise Refused(400, f"{what} {shown} contains '..'")
    if value.startswith("."):
        raise Refused(400, f"{what} {shown} starts with '.'")
    if ":" in value:
        raise Refused(400, f"{what} {shown} contains ':' (a drive or stream separator on Windows)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Refused(400, f"{what} {shown} contains a control character")
    if len(value) > NAME_MAX:
        raise Refused(400, f"{what} is {len(value)} characters long, more than {NAME_MAX}")
    return value


def check_tag(value: object) -> str:
    """A label tag that is one word (letters, digits, ``_``, ``-``; at most 64): returned, or :class:`Refused` (400)."""
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise Refused(400, f"label tag {str(value)[:80]!r} is not a word of letters, digits, '_' or '-'")
    return value


def check_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` with links resolved, if that lies strictly inside ``root`` (resolved too); else :class:`Refused` (400).

    A study that is a symbolic link out of the studies folder is refused as well: the server reads and
    writes only below its folders.
    """
    root_resolved = Path(root).resolve()
    resolved = Path(root_resolved, path).resolve()
    if resolved == root_resolved or not resolved.is_relative_to(root_resolved):
        raise Refused(400, f"{Path(path).name!r} resolves outside the datastore folder")
    return resolved


def file_suffix(path: str | os.PathLike, allowed: Sequence[str]) -> str:
    """The one of ``allowed`` that the file name ends with (case-insensitive); else :class:`Refused` (415)."""
    name = Path(path).name.lower()
    for suffix in allowed:
        if name.endswith(suffix):
            return suffix
    raise Refused(415, f"a {' or '.join(allowed)} file is expected, got {Path(path).name[-40:]!r}")


def study_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, rows, columns) of a DICOM study file's stored pixels, from its header.

    Raises:
        Refused: 422, when the file is not a DICOM image with rows, columns and pixel data.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises several types for files that are not DICOM
        raise Refused(422, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    try:
        frames, rows, columns = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise Refused(422, f"a DICOM file without a usable number of frames, Rows or Columns ({e})") from e
    if min(frames, rows, columns) < 1:
        raise Refused(422, f"a DICOM image of shape {(frames, rows, columns)}: nothing to label")
    return frames, rows, columns


def check_label_file(path: str | os.PathLike, shape: Sequence[int], classes: Collection[int]) -> None:
    """Refuse (422) a label map the bundle could not train on; the same reading as its ``read_label_map``.

    A label map is NIfTI with voxel axes (columns, rows, frames) of the study's stored pixel array
    (trailing axes of length 1 are dropped, a 2D map is one frame), holding class ids: 0 (background) or
    one of ``classes``.

    Args:
        path: the uploaded file.
        shape: the study's (frames, rows, columns).
        classes: the lesion class ids of the class map.

    Raises:
        Refused: 422 naming what is wrong: not a readable NIfTI file, another shape, values that are not
            finite integers, or class ids the class map does not have.
    """
    import nibabel as nib
    import numpy as np

    shape = tuple(int(s) for s in shape)
    try:
        image = nib.load(str(path))
        header_shape = tuple(int(s) for s in image.shape)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise Refused(422, f"label is not a readable NIfTI file ({type(e).__name__}: {e})") from e
    while len(header_shape) > 3 and header_shape[-1] == 1:
        header_shape = header_shape[:-1]
    if len(header_shape) == 2:
        header_shape = (*header_shape, 1)
    expected = (shape[2], shape[1], shape[0])
    # the header says the shape: a map of another size is refused before its data are decompressed
    if header_shape != expected:
        raise Refused(
            422,
            f"label shape {header_shape} (columns, rows, frames) does not match the study's {expected}: "
            f"a label map has the study's stored shape (frames, rows, columns) = {shape}",
        )
    try:
        data = np.asarray(image.dataobj).reshape(expected)
    except Exception as e:
        raise Refused(422, f"label data cannot be read ({type(e).__name__}: {e})") from e
    if data.dtype.kind not in "biuf":
        raise Refused(422, f"label values of type {data.dtype} are not class ids")
    if data.dtype.kind == "f" and (not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data))):
        raise Refused(422, "label values must be whole class ids (found fractions, NaN or infinity)")
    allowed = {0, *(int(c) for c in classes)}
    found = {int(v) for v in np.unique(data)}
    unknown = sorted(found - allowed)
    if unknown:
        raise Refused(
            422,
            f"label holds class values {unknown[:10]} that the class map does not have (allowed: {sorted(allowed)})",
        )


def explicit_host(argv: Sequence[str]) -> str | None:
    """The host given to ``monailabel start_server`` (``-i``/``--host``) in ``argv``, or None when none was given.

    MONAI Label's own default is ``0.0.0.0``, every network the machine is on, so "not given" has to be
    told apart from "given as 0.0.0.0"; its parser cannot, hence this one, which reads only that option
    (argparse's prefix matching included, so ``--ho 1.2.3.4`` counts as it does for MONAI Label).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--host", default=None)
    known, _ = parser.parse_known_args(list(argv))
    return known.host

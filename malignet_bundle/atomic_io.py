"""Atomic file writes: every output of the bundle goes through here.

A reader (a person, a resuming training, a MONAI Label server) must never see half a file, and a crash
or a kill mid-write must leave the previous version intact. Each writer therefore writes into a temporary
file in the destination folder (same filesystem, so the rename is atomic), flushes it to disk, and only
then ``os.replace``-s it over the destination; the folder entry is flushed too, so the rename itself
survives a power loss. On any error the temporary file is removed and the destination is untouched.

The temporary name keeps the destination's suffixes (``.nii.gz``, ``.png``, ``.pt``), because some
writers (nibabel, matplotlib, PIL) choose the format from the file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_PREFIX",
    "atomic_path",
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "save_torch_atomic",
    "save_figure_atomic",
    "save_nifti_atomic",
    "save_dicom_atomic",
    "is_temporary",
    "sha256_file",
]

# Every temporary file starts with this, so a folder listing (or a clean-up after a SIGKILL) can tell them.
TEMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    # Not every platform can open a directory (Windows); the rename is still atomic there.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is synced and renamed onto ``path``.

    Args:
        path: the destination; its folder is created if missing.

    Example::

        with atomic_path("out/overlay.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix="." + path.name)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (serialised first, so a bad object writes nothing)."""
    return write_text_atomic(json.dumps(obj, indent=indent), path)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints, ``model.pt``)."""
    import torch

    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_figure_atomic(fig: Any, path: str | os.PathLike, close: bool = True, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically, then close it (unless ``close`` is False)."""
    savefig_kwargs.setdefault("format", "png")
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs))
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)


def save_nifti_atomic(image: Any, path: str | os.PathLike) -> Path:
    """``nibabel.save`` a NIfTI image to ``path`` (``.nii`` or ``.nii.gz``) atomically."""
    import nibabel as nib

    return write_atomic(path, lambda tmp: nib.save(image, tmp))


def save_dicom_atomic(ds: Any, path: str | os.PathLike) -> Path:
    """Write a pydicom ``Dataset`` as a DICOM file (with its file meta) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a temporary file of this module (left behind only by a killed process)."""
    return Path(path).name.startswith(TEMP_PREFIX)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (duplicate detection, input integrity checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

"""MONAI Label's local datastore with a door: ids, tags and uploads are checked before any file is touched.

``LocalDatastore`` (0.8.5) joins request ids and tags into paths and copies uploads there as they are: an
image id ``../../x`` or a tag ``../..`` wrote outside the studies folder, an upload with an existing id
replaced a study, and any bytes were stored as a label, to break the next training. Here every id and tag
is checked (:mod:`lib.safety`) and every path resolved inside its folder before a file is read or written;
an uploaded study must be a DICOM file with a new id, an uploaded label a NIfTI map of the study's shape
holding only class ids of the class map; and what is stored is written atomically.

A refusal is a ``fastapi.HTTPException`` with a 4xx status and the reason as its ``detail``: MONAI Label's
endpoints call the datastore synchronously, so it reaches the client as ``{"detail": reason}``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.safety import (
    LABEL_SUFFIXES,
    STUDY_SUFFIX,
    Refused,
    check_inside,
    check_label_file,
    check_study_id,
    check_tag,
    file_suffix,
    study_shape,
)
from malignet_bundle.atomic_io import write_atomic

logger = logging.getLogger(__name__)


def _discard_upload(path: str | None) -> None:
    """Remove a refused upload that MONAI Label's endpoint left in the temporary folder.

    The endpoint schedules that removal as a background task of its response, which FastAPI drops when the
    endpoint raises; only a file directly in the temporary folder is removed, never a path a client named.
    """
    if path and Path(path).parent == Path(tempfile.gettempdir()) and Path(path).is_file():
        Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def refusing(upload: str | None = None) -> Iterator[None]:
    """Turn :class:`~lib.safety.Refused` raised inside into the HTTP error MONAI Label answers with.

    Args:
        upload: the temporary file of the request's upload, removed when the request is refused.
    """
    try:
        yield
    except Refused as e:
        _discard_upload(upload)
        logger.warning("refused (%d): %s", e.status, e.reason)
        raise HTTPException(status_code=e.status, detail=e.reason) from e


class GuardedDatastore(LocalDatastore):
    """A folder of DICOM studies with their labels in ``labels/<tag>/``, that nobody escapes.

    Args:
        datastore_path: the studies folder.
        class_values: the lesion class ids a label map may hold (besides 0, background).
        extensions: study file patterns (``*.dcm``).
        auto_reload: follow files added to or removed from the folder while the server runs.
    """

    def __init__(
        self,
        datastore_path: str,
        class_values: Collection[int],
        extensions: tuple[str, ...] = ("*" + STUDY_SUFFIX,),
        auto_reload: bool = True,
    ) -> None:
        self._root = Path(datastore_path).resolve()
        self._class_values = frozenset(int(c) for c in class_values)
        super().__init__(str(self._root), extensions=extensions, auto_reload=auto_reload)

    # ---- checks -------------------------------------------------------------------------------------------

    def _known_study(self, image_id: object) -> str:
        """A valid id of a study in the datastore, whose file lies inside the folder; else Refused."""
        image_id = check_study_id(image_id)
        if image_id not in self._datastore.objects:
            raise Refused(404, f"study {image_id!r} is not in the datastore")
        check_inside(self._root, super().get_image_uri(image_id))
        return image_id

    def _label_folder(self, tag: str) -> Path:
        return check_inside(self._root / self._datastore.labels_dir, tag)

    def _list_files(self, path: str, patterns: list[str]) -> dict[str, str]:
        """Files of a folder matching ``patterns``, without hidden ones.

        Hidden names are not study ids, and the atomic writes' temporary files (``.tmp-…``) are hidden: the
        folder watcher must not list a half-written study.
        """
        return {k: v for k, v in super()._list_files(path, patterns).items() if not k.startswith(".")}

    # ---- reading ------------------------------------------------------------------------------------------

    def get_image_uri(self, image_id: str) -> str:
        """The study's file, or ``""`` for an unknown id; a malformed id or a path is refused (400)."""
        with refusing():
            check_study_id(image_id)
            if image_id in self._datastore.objects:
                self._known_study(image_id)
        return super().get_image_uri(image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The study's info; a malformed id is refused (400)."""
        with refusing():
            check_study_id(image_id)
        return super().get_image_info(image_id)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file, or ``""`` when there is none; a malformed id or tag is refused (400)."""
        with refusing():
            check_study_id(label_id, "label id")
            self._label_folder(check_tag(label_tag))
            uri = super().get_label_uri(label_id, label_tag)
            if uri:
                check_inside(self._root, uri)
        return uri

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """The label's info; a malformed id or tag is refused (400)."""
        with refusing():
            check_study_id(label_id, "label id")
            check_tag(label_tag)
        return super().get_label_info(label_id, label_tag)

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        """Tag → label id of a study; a malformed id is refused (400)."""
        with refusing():
            check_study_id(image_id)
        return super().get_labels_by_image_id(image_id)

    # ---- writing ------------------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded study under a new id: a DICOM image; an id in use is refused (409), studies stay."""
        with refusing(upload=image_filename):
            file_suffix(image_filename, (STUDY_SUFFIX,))
            image_id = check_study_id(image_id or Path(image_filename).name[: -len(STUDY_SUFFIX)])
            if image_id in self._datastore.objects:
                raise Refused(409, f"study {image_id!r} exists: a study in the datastore is never replaced")
            dest = check_inside(self._root, self._filename(image_id, STUDY_SUFFIX))
            if dest.exists():
                raise Refused(409, f"a file {dest.name!r} exists in the datastore: it is never replaced")
            study_shape(image_filename)
        with self._lock():
            write_atomic(dest, lambda tmp: shutil.copyfile(image_filename, tmp))
            info = dict(image_info or {}, ts=int(time.time()), name=dest.name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=STUDY_SUFFIX))
            self._update_datastore_file(lock=False)
        logger.info("added study %s", image_id)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a study's label map under ``labels/<tag>/`` once it is one the bundle can train on.

        Refused before anything is written: a malformed id or tag (400), a study not in the datastore
        (404), a file that is not ``.nii``/``.nii.gz`` (415), and (422) a file nibabel cannot read, a map of
        another shape than the study's (frames, rows, columns), or values other than 0 and the class ids.
        """
        with refusing(upload=label_filename):
            image_id = self._known_study(image_id)
            folder = self._label_folder(check_tag(label_tag or DefaultLabelTag.FINAL.value))
            suffix = file_suffix(label_filename, LABEL_SUFFIXES)
            dest = check_inside(folder, self._filename(image_id, suffix))
            shape = study_shape(super().get_image_uri(image_id))
            check_label_file(label_filename, shape, self._class_values)
        tag = folder.name
        obj = self._datastore.objects[image_id]
        with self._lock():
            folder.mkdir(parents=True, exist_ok=True)
            # a training reading the labels never sees half a file
            write_atomic(dest, lambda tmp: shutil.copyfile(label_filename, tmp))
            info = dict(label_info or {}, ts=int(time.time()), name=dest.name)
            obj.labels[tag] = DataModel(info=info, ext=suffix)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s of %s", tag, image_id)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Remove a study and its labels (MONAI Label's admin action); a malformed or unknown id is refused."""
        with refusing():
            self._known_study(image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label; a malformed id or tag is refused (400)."""
        with refusing():
            check_study_id(label_id, "label id")
            self._label_folder(check_tag(label_tag))
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update a study's info; a malformed or unknown id is refused."""
        with refusing():
            self._known_study(image_id)
        super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update a label's info; a malformed id or tag is refused (400)."""
        with refusing():
            check_study_id(label_id, "label id")
            check_tag(label_tag)
        super().update_label_info(label_id, label_tag, info)

    def _lock(self) -> FileLock:
        return FileLock(self._lock_file)

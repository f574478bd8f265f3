"""Whole-body inference as a MONAI evaluator: NM studies in, lesions in whole-body stored-pixel coordinates out.

``configs/inference.json`` wires these pieces in the model zoo's shape, one study (anterior + posterior view)
per evaluator iteration:

- ``dataset``: the studies of a file, a folder or a datalist (:func:`collect_studies`) as items
  (:meth:`StudyInput.as_item`); ``preprocessing``: :class:`LoadStudyd` reads every file of the study once
  and checks that its views make one study (:func:`plan_study`), then :class:`ForEachViewd` runs the view
  transforms (the same as training's: select the view, mirror a posterior one, chest detector, chest crop)
  on each view. A study that cannot be read is kept, with its reason, to be skipped and reported.
- ``evaluator``: ``DetectionEvaluator`` with :func:`collate_study` batches, :func:`prepare_study_batch`
  (the view crops) and :class:`ViewInferer` (one network call per view).
- ``postprocessing``: :class:`ViewDetectionsd` hands each view its detections; the inverse of the view
  geometry (``transforms/geometry.PasteFromChestd``, ``UnmirrorPosteriord``) brings the masks back to the
  frame as stored in the DICOM file; :class:`StudyPredictiond` assembles the study's
  :class:`~malignet_bundle.outputs.prediction.StudyPrediction`.
- ``handlers``: the writers of :mod:`malignet_bundle.outputs.handlers` and :class:`InferenceSummaryHandler`
  (output folder checked before anything is written, ``summary.json``, :class:`NoStudyWrittenError`).

:func:`predict_studies` runs such an evaluator for callers that want the predictions rather than files
(the MONAI Label task, ``scripts/compare_predictions.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.handlers import CheckpointLoader
from monai.inferers import Inferer
from monai.transforms import MapTransform

from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import load_datalist, resolve_items
from malignet_bundle.data.nm_dicom import InputFileError, NMViews, read_nm_views
from malignet_bundle.data.reader import NMWholeBodyReader
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction
from malignet_bundle.transforms.io import LoadNMViewd

__all__ = [
    "StudyInput",
    "OUTPUT_MARKER",
    "OutputLocationError",
    "NoStudyWrittenError",
    "collect_studies",
    "input_roots",
    "check_output_dir",
    "load_weights",
    "state_dict_mismatch",
    "VIEW_RULES",
    "PlannedView",
    "plan_study",
    "DecodedNMReader",
    "LoadStudyd",
    "ForEachViewd",
    "collate_study",
    "prepare_study_batch",
    "ViewInferer",
    "ViewDetectionsd",
    "StudyPredictiond",
    "WeightsLoader",
    "InferenceSummaryHandler",
    "predict_studies",
    "write_study_outputs",
]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
# Written into every inference output folder: a later run over a folder that holds it never reads our own
# outputs (DICOM SEG files, say) back as studies.
OUTPUT_MARKER = ".malignet-inference-output"


class OutputLocationError(ValueError):
    """The output folder would write into the inputs (or their dataset folder)."""


class NoStudyWrittenError(RuntimeError):
    """Every study of a run was skipped: the run failed, and says why for each (also in ``summary.json``)."""


# how read_nm_views found a file's views (its ``view_source``), in words for messages
VIEW_RULES = {
    "view-code": "view code",
    "text": "header text",
    "fallback": "frame-order fallback (no view code)",
}


@dataclass
class StudyInput:
    """The items of one study.

    Each item is ``{"image": path, "view": name or None}`` (None: every view in the file), plus ``label``
    (annotation path) for datalist items that have one.
    """

    study_id: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def as_item(self) -> dict[str, Any]:
        """The study as a dataset item, ``{"study_id": ..., "items": [...]}`` (what :class:`LoadStudyd` reads)."""
        return {"study_id": self.study_id, "items": [dict(item) for item in self.items]}


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def _unique_ids(studies: list[StudyInput]) -> list[StudyInput]:
    seen: dict[str, int] = {}
    for study in studies:
        base = _safe_id(study.study_id)
        seen[base] = seen.get(base, 0) + 1
        study.study_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
    return studies


def collect_studies(
    source: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> list[StudyInput]:
    """Studies to run on, from a DICOM file, a folder of DICOM files, or a datalist JSON.

    A folder is searched recursively for files with a DICOM suffix (or none); files of one StudyInstanceUID
    form one study (one multi-frame file, or one single-frame file per view). Folders holding an earlier
    inference's outputs (:data:`OUTPUT_MARKER`) are left out. A datalist's ``split`` items are grouped by
    ``patient_id``. A file whose header cannot be read becomes a study of its own, so that the run reports
    it instead of losing it.

    Args:
        source: the file, folder or ``.json`` datalist.
        dataset_dir: folder the datalist's paths are relative to; None (the default): the datalist's own
            folder, so a datalist never silently reads another dataset's files.
        split: datalist split to run on.
    """
    source = Path(source)
    if source.suffix.lower() == ".json":
        root = Path(dataset_dir) if dataset_dir is not None else source.parent
        items = resolve_items(load_datalist(source)[split], root)
        if not items:
            raise ValueError(f"{source}: the {split!r} split is empty")
        grouped: dict[str, StudyInput] = {}
        for item in items:
            key = str(item.get("patient_id") or Path(item["image"]).stem)
            entry = {"image": item["image"], "view": item.get("view")}
            if "label" in item:  # kept for pictures and checks against the ground truth
                entry["label"] = item["label"]
            grouped.setdefault(key, StudyInput(key)).items.append(entry)
        return _unique_ids(list(grouped.values()))
    if source.is_file():
        return _unique_ids([StudyInput(source.stem, [{"image": str(source), "view": None}])])
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such DICOM file, folder or datalist")
    outputs = sorted(marker.parent for marker in source.rglob(OUTPUT_MARKER))
    for folder in outputs:
        logger.info("leaving out %s: it holds an earlier inference's outputs", folder)
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in DICOM_SUFFIXES
        and not any(p.is_relative_to(folder) for folder in outputs)
    )
    by_study: dict[str, StudyInput] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            key = str(header.get("StudyInstanceUID") or path)
            name = str(header.get("PatientID") or path.stem)
        except Exception:  # unreadable: keep it as its own study so the run names it and the reason
            key, name = str(path), path.stem
        by_study.setdefault(key, StudyInput(name)).items.append({"image": str(path), "view": None})
    if not by_study:
        raise ValueError(f"{source}: no DICOM files (suffixes {', '.join(s or 'none' for s in DICOM_SUFFIXES)})")
    return _unique_ids(list(by_study.values()))


def input_roots(source: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders whose contents are inputs of a run on ``source`` (see :func:`collect_studies`).

    A folder input is one; a datalist's is its dataset folder (``dataset_dir`` or the datalist's folder).
    A single file contributes no folder here; :func:`check_output_dir` keeps outputs off its folder itself.
    """
    source = Path(source)
    if source.suffix.lower() == ".json":
        return [Path(dataset_dir) if dataset_dir is not None else source.parent]
    return [source] if source.is_dir() else []


def check_output_dir(
    output_dir: str | os.PathLike,
    studies: Sequence[StudyInput],
    roots: Sequence[str | os.PathLike] = (),
) -> Path:
    """Refuse an output folder that would write into the inputs; returns the resolved folder.

    Refused: an output folder that is, or lies inside, one of ``roots`` (the input folder, the dataset
    folder) or a folder that directly holds an input file; and one whose per-study subfolders would be, or
    contain, an input.

    Raises:
        OutputLocationError: naming the output folder, the input it collides with, and what to do.
    """
    out = Path(output_dir).resolve()
    files = [Path(item["image"]).resolve() for study in studies for item in study.items]
    files += [Path(item["label"]).resolve() for study in studies for item in study.items if "label" in item]
    folders = {Path(r).resolve() for r in roots} | {f.parent for f in files}
    for folder in sorted(folders):
        if out == folder or out.is_relative_to(folder):
            raise OutputLocationError(
                f"output folder {out} is inside the input folder {folder}: inference would write among the "
                "inputs (and a later run would read its outputs as studies); choose an --output_dir outside it"
            )
    for study in studies:
        target = out / study.study_id
        for path in [*folders, *files]:
            if path == target or path.is_relative_to(target):
                raise OutputLocationError(
                    f"output folder {target} for study {study.study_id} would hold the input {path}; "
                    "choose another --output_dir"
                )
    return out


def state_dict_mismatch(network: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """How ``state`` differs from ``network``'s tensors, in one line; None when every tensor fits.

    What ``load_state_dict`` would list key by key (hundreds of names for weights of another network), counted.

    Args:
        network: the network (unwrapped if data-parallel).
        state: a state dict.
    """
    module = network.module if hasattr(network, "module") else network
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    foreign = [key for key in state if key not in expected]
    reshaped = [
        key
        for key in expected
        if key in state and hasattr(state[key], "shape") and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if not (missing or foreign or reshaped):
        return None
    first = (missing or foreign or reshaped)[0]
    return (
        f"{len(missing)} of the network's {len(expected)} tensors are missing from the file, {len(foreign)} of its "
        f"{len(state)} are not the network's, {len(reshaped)} have another shape (first: {first!r})"
    )


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a bundle checkpoint into ``network`` with ``weights_only=True`` (a foreign file cannot run code).

    Accepts ``model.pt`` (a state dict) and training checkpoints (``{"model": state dict, ...}``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, when it is no checkpoint or its tensors are not the network's
            (:func:`state_dict_mismatch`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; train a model first (make train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or a pickle that asks for code: name the file
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    mismatch = state_dict_mismatch(network, state)
    if mismatch is not None:
        raise ValueError(f"{path}: not weights of the configured network: {mismatch}")
    module = network.module if hasattr(network, "module") else network
    module.load_state_dict(state)
    return network


class PlannedView(NamedTuple):
    """One view of a study as :func:`plan_study` found it.

    Its file, the file's decoded views, the view, and the study item it came from.
    """

    path: str
    nm: NMViews
    view: str
    item: Mapping[str, Any] | None = None


def plan_study(study: StudyInput) -> list[PlannedView]:
    """Read every file of ``study`` once and check that its views make one study; one entry per view, in order.

    A file listed by several items (a datalist lists a two-view file once per view) is decoded once; its
    entries share the decoded :class:`NMViews`.

    Refused, with the files named: a file the NM reader refuses; a view the item asks for that its file does
    not have; two files that hold the same view (for example two single-view files of one acquisition without
    a view code, both taken as anterior by the frame-order fallback); files that differ in pixel spacing.

    Args:
        study: the study's items (``image`` path, ``view`` name or None for every view of the file).

    Returns:
        One :class:`PlannedView` per view, in the order of the items and of each file's frames.

    Raises:
        InputFileError: naming the file and the reason (and the other file of a collision).
        ValueError: the study has no items.
    """
    planned: list[PlannedView] = []
    owner: dict[str, tuple[str, str]] = {}  # view → (file, how that file's views were found)
    decoded: dict[str, NMViews] = {}
    for item in study.items:
        path = str(item["image"])
        nm = decoded.get(path)
        if nm is None:
            nm = decoded[path] = read_nm_views(path)
        if planned and tuple(nm.spacing) != tuple(planned[0].nm.spacing):
            raise InputFileError(
                path,
                f"pixel spacing {nm.spacing} differs from {planned[0].path}'s {planned[0].nm.spacing} in one study",
            )
        for view in [item["view"]] if item.get("view") else nm.views:
            if view not in nm.views:
                raise InputFileError(path, f"view {view!r} not in file (has {nm.views})")
            if view in owner:
                other, other_rule = owner[view]
                raise InputFileError(
                    path,
                    f"collides with {other} in study {study.study_id}: both hold the {view} view (found by "
                    f"{VIEW_RULES[nm.view_source]} here, by {VIEW_RULES[other_rule]} there); give the files as "
                    "separate inputs or add view codes (ViewCodeSequence)",
                )
            owner[view] = (path, nm.view_source)
            planned.append(PlannedView(path, nm, view, item))
    if not planned:
        raise ValueError(f"study {study.study_id} has no images")
    return planned


class DecodedNMReader(NMWholeBodyReader):
    """:class:`NMWholeBodyReader` over files decoded already: :meth:`read` hands back their :class:`NMViews`.

    Given to ``LoadNMViewd`` as its runtime reader, it yields the very MetaTensor (array, affine, meta) that
    reading the file would, without decoding the pixels again.

    Args:
        decoded: the decoded views of each file, by path.
    """

    def __init__(self, decoded: Mapping[str | os.PathLike, NMViews]) -> None:
        super().__init__()
        self.decoded = {self._key(path): nm for path, nm in decoded.items()}

    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        # LoadImage passes file names as str(Path(name).expanduser())
        return str(Path(path).expanduser())

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> NMViews | list[NMViews]:
        """The decoded views of one file, or of several as a list.

        Raises:
            KeyError: naming a file that was not decoded beforehand.
        """
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        missing = [str(name) for name in names if self._key(name) not in self.decoded]
        if missing:
            raise KeyError(f"{missing[0]}: not among the decoded files {sorted(self.decoded)}")
        items = [self.decoded[self._key(name)] for name in names]
        return items if len(items) > 1 else items[0]


class LoadStudyd(MapTransform):
    """Read every file of a study once and lay out its views, or record why the study cannot be used.

    The item ``{"study_id": ..., "items": [...]}`` (:meth:`StudyInput.as_item`) gains ``views``: one dict per
    view in the study's order, with ``image`` (the file's (n_views, H, W) MetaTensor exactly as ``LoadNMViewd``
    gives it, built from the pixels decoded once), ``view``, ``frame_index``, ``frame`` (the view's (H, W)
    counts as stored), ``source_path``, ``dataset`` (the file's header) and the item's other keys (e.g.
    ``label``); and ``spacing`` ((row, col) mm). A study whose files the NM reader refuses, or whose views
    collide (:func:`plan_study`), gets ``error`` = ``{"path": ..., "reason": ...}`` and no views, so that the
    run skips it with its reason; any other error propagates.

    Args:
        keys: the key of the study's items.
        study_id_key: the key of the study's name.
        views_key: where the views go.
        error_key: where the reason that the study cannot be used goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "items",
        study_id_key: str = "study_id",
        views_key: str = "views",
        error_key: str = "error",
    ) -> None:
        super().__init__(keys)
        self.study_id_key, self.views_key, self.error_key = study_id_key, views_key, error_key
        self.loader = LoadNMViewd("image")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the study's views (or its error)."""
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                planned = plan_study(StudyInput(str(d[self.study_id_key]), list(d[key])))
            except InputFileError as e:  # the input's fault: the run skips the study and says why
                d[self.error_key], d[self.views_key] = {"path": e.path, "reason": e.reason}, []
                continue
            reader = DecodedNMReader({entry.path: entry.nm for entry in planned})
            views = []
            for entry in planned:
                index = entry.nm.views.index(entry.view)
                extra = {k: v for k, v in (entry.item or {}).items() if k not in ("image", "view")}
                views.append(
                    {
                        **extra,
                        "image": self.loader({"image": entry.path}, reader)["image"],
                        "view": entry.view,
                        "frame_index": index,
                        "frame": entry.nm.frames[index],
                        "source_path": entry.path,
                        "dataset": entry.nm.dataset,
                    }
                )
            d[self.views_key], d["spacing"] = views, tuple(planned[0].nm.spacing)
        return d


class ForEachViewd(MapTransform):
    """Apply a transform to every view of a study: the view transforms before the network, their inverse after.

    Args:
        transform: callable on one view's dict, returning the new dict (e.g. a ``Compose``).
        keys: the key of the study's list of views.
    """

    def __init__(self, transform: Callable[[dict], Mapping[Hashable, Any]], keys: KeysCollection = "views") -> None:
        super().__init__(keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` whose views went through the transform."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = [dict(self.transform(view)) for view in d[key]]
        return d


def collate_study(batch: Sequence[Mapping[Hashable, Any]]) -> dict[Hashable, Any]:
    """The data loader's batch of one study → that study's item: one study per evaluator iteration.

    A dict (not a list) as the engine's batch lets the evaluator's postprocessing see the study beside the
    network's output.

    Args:
        batch: the loader's list of items.

    Returns:
        The one item.

    Raises:
        ValueError: a batch of another size (give the data loader ``batch_size`` 1).
    """
    if len(batch) != 1:
        raise ValueError(f"inference takes one study per iteration, got a batch of {len(batch)}: set batch_size 1")
    return dict(batch[0])


def prepare_study_batch(
    batchdata: Mapping[Hashable, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[list[torch.Tensor], None]:
    """A study item → (its view crops as float32 tensors on ``device``, no targets).

    A study that could not be read has no views and gives an empty list.

    Args:
        batchdata: the study item after preprocessing (:func:`collate_study`).
        device: where the network runs.
        non_blocking: copy asynchronously to the device.
        kwargs: further arguments of the engine's ``prepare_batch`` call, unused.

    Returns:
        The crops and None.
    """
    crops = [
        torch.as_tensor(view["image"], dtype=torch.float32).to(device=device, non_blocking=non_blocking)
        for view in batchdata["views"]
    ]
    return crops, None


class ViewInferer(Inferer):
    """Run a list-in, list-out detector on the view crops of a study, one call per view.

    One call per view keeps each view's detections independent of the study's other view (a batch of two
    may run other convolution kernels and move scores in their last digits). A study without views makes no
    call and gets no detections.
    """

    def __call__(self, inputs: Sequence[torch.Tensor], network: Callable, *args: Any, **kwargs: Any) -> list[dict]:
        """Return one torchvision detection dict per crop, ``network([crop])[0]``."""
        return [network([crop], *args, **kwargs)[0] for crop in inputs]


class ViewDetectionsd(MapTransform):
    """Hand each view of a study its detections, moved to the CPU.

    ``pred`` (one torchvision detection dict per view, in the views' order) becomes, in each view's dict,
    ``pred_masks`` ((N, 1, h, w) float probabilities over the crop), ``pred_labels`` and ``pred_scores``
    (numpy).

    Args:
        keys: the key of the detections.
        views_key: the key of the study's views.
    """

    def __init__(self, keys: KeysCollection = "pred", views_key: str = "views") -> None:
        super().__init__(keys)
        self.views_key = views_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` whose views hold their detections.

        Raises:
            ValueError: when there are not as many detection dicts as views.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            detections, views = list(d[key]), list(d[self.views_key])
            if len(detections) != len(views):
                raise ValueError(f"study {d.get('study_id')}: {len(detections)} detection sets for {len(views)} views")
            d[self.views_key] = [
                {
                    **view,
                    "pred_masks": found["masks"].float().cpu(),
                    "pred_labels": found["labels"].cpu().numpy(),
                    "pred_scores": found["scores"].float().cpu().numpy(),
                }
                for view, found in zip(views, detections, strict=True)
            ]
        return d


class StudyPredictiond(MapTransform):
    """Assemble a study's :class:`StudyPrediction` from its views' lesions in stored-frame coordinates.

    Runs after the inverse view geometry. Per view the lesions are ordered by score, highest first (report
    ids and label-image instances follow this order), and a lesion whose mask vanished (scaled down to a
    tiny crop and back) is dropped. A study that could not be read (``error``) gets None.

    Args:
        keys: the key of the study's views; each view has ``pred_masks`` ((N, H, W) bool), ``pred_labels``,
            ``pred_scores``, ``chest_box``, ``view``, ``frame_index``, ``frame``, ``source_path``, ``dataset``.
        prediction_key: where the :class:`StudyPrediction` goes.
        study_id_key: the key of the study's name.
        error_key: the key :class:`LoadStudyd` records a reason in.
    """

    def __init__(
        self,
        keys: KeysCollection = "views",
        prediction_key: str = "prediction",
        study_id_key: str = "study_id",
        error_key: str = "error",
    ) -> None:
        super().__init__(keys)
        self.prediction_key, self.study_id_key, self.error_key = prediction_key, study_id_key, error_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the study's prediction (None for a study that could not be read)."""
        d = dict(data)
        for key in self.key_iterator(d):
            if d.get(self.error_key):
                d[self.prediction_key] = None
                continue
            prediction = StudyPrediction(str(d[self.study_id_key]), [], [], tuple(d["spacing"]))
            for view in d[key]:
                masks, scores = np.asarray(view["pred_masks"], dtype=bool), np.asarray(view["pred_scores"])
                keep = np.argsort(-scores, kind="stable")
                keep = keep[masks[keep].any(axis=(1, 2))]
                prediction.views.append(
                    ViewPrediction(
                        view=view["view"],
                        frame_index=int(view["frame_index"]),
                        image=view["frame"],
                        masks=masks[keep],
                        labels=np.asarray(view["pred_labels"])[keep].astype(np.int64),
                        scores=scores[keep],
                        chest_box=tuple(float(v) for v in view["chest_box"]),
                    )
                )
                prediction.source_paths.append(view["source_path"])
                prediction.datasets.append(view["dataset"])
            d[self.prediction_key] = prediction
        return d


class WeightsLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for the bundle's ``model.pt``, with errors that name the file and the reason.

    Loads with ``weights_only=True`` (a foreign file cannot run code), a state dict (``model.pt``) or a
    training checkpoint (``{"model": state dict, ...}``) alike, as its parent does. Call it with the evaluator
    in ``initialize``, or attach it as a handler.

    Args:
        load_path: the checkpoint.
        load_dict: ``{"model": network}``.
        kwargs: further ``CheckpointLoader`` arguments (``map_location``, ``strict``, ...).
    """

    def __init__(self, load_path: str | os.PathLike, load_dict: dict, **kwargs: Any) -> None:
        super().__init__(load_path=str(load_path), load_dict=load_dict, **kwargs)

    def __call__(self, engine: Engine) -> None:
        """Load the weights into ``load_dict``'s objects.

        Raises:
            FileNotFoundError: the checkpoint does not exist.
            ValueError: naming the file, when it is no checkpoint or its weights do not fit the network (for
                example weights of another network size than the configs build).
        """
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found; train a model first (make train)")
        try:
            super().__call__(engine)
        except Exception as e:  # truncated, not a checkpoint, a pickle that asks for code, another network
            raise ValueError(f"{path}: not loadable into the configured network ({type(e).__name__}: {e})") from e


class InferenceSummaryHandler:
    """The bookkeeping of an inference run, as ignite handlers on its evaluator.

    - ``STARTED``: refuses an output folder that would write into the inputs (:func:`check_output_dir`)
      before anything is written, then marks the folder as inference output (:data:`OUTPUT_MARKER`).
    - ``ITERATION_COMPLETED``: a study that could not be read is logged with its reason and listed as
      skipped, any other as written. Attach it after the writers: their errors stop the run before this.
    - ``COMPLETED``: writes ``summary.json`` (``{"written": [study ids], "skipped": [[study id, reason]]}``)
      and raises :class:`NoStudyWrittenError` when every study was skipped, so that a run which produced
      nothing never ends as a success.

    Args:
        output_dir: the run's output folder.
        studies: the run's studies (their files and per-study folders are checked against ``output_dir``).
        roots: the input and dataset folders (:func:`input_roots`).
        study_id_key: the batch key of the study's name.
        error_key: the batch key :class:`LoadStudyd` records a reason in.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        studies: Sequence[StudyInput],
        roots: Sequence[str | os.PathLike] = (),
        study_id_key: str = "study_id",
        error_key: str = "error",
    ) -> None:
        self.output_dir, self.studies, self.roots = Path(output_dir), list(studies), list(roots)
        self.study_id_key, self.error_key = study_id_key, error_key
        self.summary: dict[str, list] = {"written": [], "skipped": []}

    def attach(self, engine: Engine) -> None:
        """Register the three handlers on ``engine``."""
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        """Check the output folder, then mark it.

        Raises:
            OutputLocationError: the output folder would write into the inputs.
        """
        from malignet_bundle.atomic_io import write_bytes_atomic

        check_output_dir(self.output_dir, self.studies, self.roots)
        write_bytes_atomic(b"", self.output_dir / OUTPUT_MARKER)
        self.summary = {"written": [], "skipped": []}

    def iteration_completed(self, engine: Engine) -> None:
        """List the study of this iteration as written or skipped (with its reason, also logged)."""
        batch = engine.state.batch
        study_id, error = str(batch[self.study_id_key]), batch.get(self.error_key)
        if error:
            reason = f"{error['path']}: {error['reason']}"
            logger.warning("skipping study %s: %s", study_id, reason)
            self.summary["skipped"].append([study_id, reason])
        else:
            self.summary["written"].append(study_id)

    def completed(self, engine: Engine) -> None:
        """Write ``summary.json``.

        Raises:
            NoStudyWrittenError: every study was skipped (after ``summary.json`` is written).
        """
        from malignet_bundle.atomic_io import write_json_atomic

        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.summary, self.output_dir / "summary.json")
        written, skipped = self.summary["written"], self.summary["skipped"]
        logger.info("inference: %d studies written to %s, %d skipped", len(written), self.output_dir, len(skipped))
        if skipped and not written:
            reasons = "\n".join(f"  {study_id}: {reason}" for study_id, reason in skipped)
            raise NoStudyWrittenError(f"no study could be used, nothing written to {self.output_dir}:\n{reasons}")


def predict_studies(evaluator: Engine) -> list[StudyPrediction]:
    """Run an inference evaluator (``configs/inference.json``'s ``evaluator``) and return each study's lesions.

    For callers that want the predictions rather than files: build the workflow with ``handlers`` ``[]``
    and run its ``initialize`` (which loads the weights) first.

    Args:
        evaluator: the evaluator; its batches are study items and its output holds ``prediction``.

    Returns:
        One :class:`StudyPrediction` per study, in the data loader's order.

    Raises:
        InputFileError: naming the file and the reason, for the first study that could not be read.
    """
    predictions: list[StudyPrediction] = []

    def collect(engine: Engine) -> None:
        error = engine.state.batch.get("error")
        if error:
            raise InputFileError(error["path"], error["reason"])
        predictions.append(engine.state.output["prediction"])

    handle = evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    try:
        evaluator.run()
    finally:
        handle.remove()
    return predictions


def write_study_outputs(
    prediction: StudyPrediction,
    class_map: ClassMap,
    output_dir: str | os.PathLike,
    model: Mapping[str, Any] | None = None,
    dicom_seg: bool = True,
) -> dict[str, Path]:
    """Write the outputs of one study to ``output_dir/<study_id>/``, each file atomically.

    What the writer handlers of ``configs/inference.json`` write in a run (:mod:`malignet_bundle.outputs.
    handlers`, the same functions), for one prediction outside an evaluator. The report's metastasis verdict
    counts the lesions of the class map's malignant class (:attr:`ClassMap.malignant_label`).

    Args:
        prediction: the study's lesions.
        class_map: label → class name.
        output_dir: the run's output folder.
        model: what produced the lesions, copied into the report (its ``bundle_version`` goes into the SEGs).
        dicom_seg: write the DICOM SEGs.

    Returns:
        The written paths: ``report`` (JSON), ``overlay`` (PNG of both views), ``nifti_<view>``
        (instance-label NIfTI per view, with its ``.classes.json``; re-importable as an annotation) and
        ``seg_<view>`` (DICOM SEG per view referencing its frame of the source NM instance).
    """
    from malignet_bundle.outputs import handlers

    folder = handlers.study_folder(output_dir, prediction.study_id)
    written = {"report": handlers.write_lesion_report(prediction, class_map, folder, model)}
    written["overlay"] = handlers.write_overlay(prediction, class_map, folder)
    written.update(handlers.write_instance_labels(prediction, class_map, folder))
    if dicom_seg:
        version = str((model or {}).get("bundle_version", "0.1.0"))
        written.update(handlers.write_segs(prediction, class_map, folder, version))
    return written

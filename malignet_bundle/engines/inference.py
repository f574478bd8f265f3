"""Whole-body inference: NM studies in, lesions in whole-body stored-pixel coordinates out.

Per view the bundle's view transforms (the same as training's, from the config) select the view, mirror a
posterior one, run the chest detector and crop and resize the chest; MaligNet finds lesions in the crop;
:meth:`LesionPredictor.predict_view` maps each mask back through the resize, the crop and the mirroring to
the frame as stored in the DICOM file. :func:`run_inference` does this for every study of a file, a folder
or a datalist and writes the outputs of :mod:`malignet_bundle.outputs`, skipping (and logging) a study it
cannot read.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.utils.misc import str2bool

from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import load_datalist, resolve_items
from malignet_bundle.data.nm_dicom import InputFileError, NMViews, read_nm_views
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction

__all__ = [
    "StudyInput",
    "OUTPUT_MARKER",
    "OutputLocationError",
    "NoStudyWrittenError",
    "collect_studies",
    "input_roots",
    "check_output_dir",
    "load_weights",
    "VIEW_RULES",
    "PlannedView",
    "plan_study",
    "LesionPredictor",
    "write_study_outputs",
    "run_inference",
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


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a bundle checkpoint into ``network`` with ``weights_only=True`` (a foreign file cannot run code).

    Accepts ``model.pt`` (a state dict) and training checkpoints (``{"model": state dict, ...}``).
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
    module = network.module if hasattr(network, "module") else network
    module.load_state_dict(state)
    return network


class PlannedView(NamedTuple):
    """One view of a study as :func:`plan_study` found it: its file, the file's decoded views, the view."""

    path: str
    nm: NMViews
    view: str


def plan_study(study: StudyInput) -> list[PlannedView]:
    """Read every file of ``study`` and check that its views make one study; one entry per view, in order.

    Refused, with the files named: a file the NM reader refuses; a view the item asks for that its file does
    not have; two files that hold the same view (for example two single-view files of one acquisition without
    a view code, both taken as anterior by the frame-order fallback); files that differ in pixel spacing.

    Raises:
        InputFileError: naming the file and the reason (and the other file of a collision).
        ValueError: the study has no items.
    """
    planned: list[PlannedView] = []
    owner: dict[str, tuple[str, str]] = {}  # view → (file, how that file's views were found)
    for item in study.items:
        path = str(item["image"])
        nm = read_nm_views(path)
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
            planned.append(PlannedView(path, nm, view))
    if not planned:
        raise ValueError(f"study {study.study_id} has no images")
    return planned


class LesionPredictor:
    """MaligNet on one whole-body view, with its lesions mapped back to the stored frame.

    Args:
        network: MaligNet (weights loaded), returning torchvision detections in eval mode.
        preprocessing: the bundle's view transforms: ``{"image": path, "view": name}`` → a dict with the
            chest crop ``image`` (1, h, w), ``crop_box`` (x0, y0, x1, y1) in the view's pixels, and the
            view's ``mirrored`` flag in the image's meta (``SelectViewd``).
        device: where the network runs.
        mask_threshold: probability above which a pixel belongs to a lesion.
        inferer: MONAI inferer that runs the network on the list of crops (``inferer(crops, network)``);
            None: the network is called directly (what MONAI's ``SimpleInferer`` does).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable[[dict], Mapping[str, Any]],
        device: str | torch.device = "cpu",
        mask_threshold: float = 0.5,
        inferer: Callable[..., Any] | None = None,
    ) -> None:
        self.network = network.to(device).eval()
        self.preprocessing, self.device, self.mask_threshold = preprocessing, torch.device(device), mask_threshold
        self.inferer = inferer

    @torch.no_grad()
    def predict_view(self, path: str | os.PathLike, view: str, frame_index: int, frame: np.ndarray) -> ViewPrediction:
        """Lesions of ``view`` of ``path`` in the coordinates of ``frame`` (the view as stored)."""
        data = self.preprocessing({"image": str(path), "view": view})
        image = data["image"]
        mirrored = bool(getattr(image, "meta", {}).get("mirrored", view == "posterior"))
        crop = torch.as_tensor(image, dtype=torch.float32)
        crops = [crop.to(self.device)]
        detections = (self.inferer(crops, self.network) if self.inferer is not None else self.network(crops))[0]
        height, width = frame.shape
        left, top, right, bottom = (int(v) for v in torch.as_tensor(data["crop_box"]).tolist())
        probabilities = detections["masks"].float().cpu()  # (N, 1, h, w) over the resized crop
        crop_size = (bottom - top, right - left)
        if probabilities.shape[0]:
            probabilities = F.interpolate(probabilities, size=crop_size, mode="bilinear")
        else:
            probabilities = torch.zeros((0, 1, *crop_size))
        masks = np.zeros((probabilities.shape[0], height, width), dtype=bool)
        masks[:, top:bottom, left:right] = (probabilities[:, 0] >= self.mask_threshold).numpy()
        chest_box = (float(left), float(top), float(right), float(bottom))
        if mirrored:  # back from the anterior orientation the network saw to the stored posterior frame
            masks = masks[:, :, ::-1].copy()
            chest_box = (float(width - right), float(top), float(width - left), float(bottom))
        # highest score first (report ids and label-image instances follow this order); a lesion can vanish
        # when scaled down to a tiny crop
        scores = detections["scores"].float().cpu().numpy()
        keep = np.argsort(-scores, kind="stable")
        keep = keep[masks[keep].any(axis=(1, 2))]
        return ViewPrediction(
            view=view,
            frame_index=frame_index,
            image=frame,
            masks=masks[keep],
            labels=detections["labels"].cpu().numpy()[keep].astype(np.int64),
            scores=scores[keep],
            chest_box=chest_box,
        )

    def predict_study(self, study: StudyInput) -> StudyPrediction:
        """Every view of ``study``; raises :class:`InputFileError` naming the file that cannot be used.

        Every file is read and the views checked (:func:`plan_study`) before the network runs.
        """
        planned = plan_study(study)
        prediction = StudyPrediction(study.study_id, [], [], planned[0].nm.spacing)
        for entry in planned:
            index = entry.nm.views.index(entry.view)
            prediction.views.append(self.predict_view(entry.path, entry.view, index, entry.nm.frames[index]))
            prediction.source_paths.append(entry.path)
            prediction.datasets.append(entry.nm.dataset)
        return prediction


def write_study_outputs(
    prediction: StudyPrediction,
    class_map: ClassMap,
    output_dir: str | os.PathLike,
    model: Mapping[str, Any] | None = None,
    dicom_seg: bool = True,
) -> dict[str, Path]:
    """Write the outputs of one study to ``output_dir/<study_id>/``, each file atomically.

    The report's metastasis verdict counts the lesions of the class map's malignant class
    (:attr:`ClassMap.malignant_label`).

    Returns the written paths: ``report`` (JSON), ``overlay`` (PNG of both views), ``nifti_<view>``
    (instance-label NIfTI per view, with its ``.classes.json``; re-importable as an annotation) and
    ``seg_<view>`` (DICOM SEG per view referencing its frame of the source NM instance).
    """
    from malignet_bundle.data.annotations import write_instance_label_image
    from malignet_bundle.outputs.overlay import save_study_overlay
    from malignet_bundle.outputs.report import write_report

    folder = Path(output_dir) / prediction.study_id
    folder.mkdir(parents=True, exist_ok=True)
    written = {"report": folder / "report.json", "overlay": folder / "overlay.png"}
    write_report(
        prediction,
        class_map,
        written["report"],
        malignant_label=class_map.malignant_label,
        model=dict(model) if model else None,
    )
    save_study_overlay(prediction, class_map, written["overlay"])
    for view in prediction.views:
        path = folder / f"{view.view}_instances.nii.gz"
        names = [class_map.name(int(label)) for label in view.labels]
        write_instance_label_image(path, view.masks, names, prediction.spacing)
        written[f"nifti_{view.view}"] = path
    if dicom_seg:
        from malignet_bundle.outputs.dicom_seg import write_dicom_segs

        version = str((model or {}).get("bundle_version", "0.1.0"))
        for view, path in zip(prediction.views, write_dicom_segs(prediction, class_map, folder, version), strict=True):
            written[f"seg_{view.view}"] = path
    return written


def run_inference(
    studies: Sequence[StudyInput],
    predictor: LesionPredictor,
    class_map: ClassMap,
    output_dir: str | os.PathLike,
    model: Mapping[str, Any] | None = None,
    dicom_seg: bool = True,
    progress: bool | str = True,
    roots: Sequence[str | os.PathLike] = (),
) -> dict[str, list]:
    """Predict and write every study; a study that cannot be read is logged with its reason and skipped.

    Nothing is written when ``output_dir`` would write into the inputs (:func:`check_output_dir`, with
    ``roots`` the input and dataset folders of :func:`input_roots`).

    Returns ``{"written": [study ids], "skipped": [(study id, reason)]}``, also written as
    ``output_dir/summary.json``.

    Raises:
        NoStudyWrittenError: every study was skipped (after ``summary.json`` is written), so that a run which
            produced nothing never ends as a success.
    """
    from malignet_bundle.atomic_io import write_bytes_atomic, write_json_atomic

    check_output_dir(output_dir, studies, roots)
    write_bytes_atomic(b"", Path(output_dir) / OUTPUT_MARKER)
    summary: dict[str, list] = {"written": [], "skipped": []}
    iterator: Any = studies
    if str2bool(progress):  # the command line's --progress false arrives as the string "false"
        from tqdm import tqdm

        iterator = tqdm(studies, desc="inference", unit="study")
    for study in iterator:
        try:
            prediction = predictor.predict_study(study)
        except InputFileError as e:  # the input's fault; anything else is a bug and must stop the run
            logger.warning("skipping study %s: %s", study.study_id, e)
            summary["skipped"].append([study.study_id, str(e)])
            continue
        write_study_outputs(prediction, class_map, output_dir, model=model, dicom_seg=dicom_seg)
        summary["written"].append(study.study_id)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(summary, Path(output_dir) / "summary.json")
    logger.info(
        "inference: %d studies written to %s, %d skipped", len(summary["written"]), output_dir, len(summary["skipped"])
    )
    if summary["skipped"] and not summary["written"]:
        reasons = "\n".join(f"  {study_id}: {reason}" for study_id, reason in summary["skipped"])
        raise NoStudyWrittenError(f"no study could be used, nothing written to {output_dir}:\n{reasons}")
    return summary

"""What the MONAI Label app asks of the bundle: lesions of one study, and a fine-tuning on a datastore.

MONAI Label 0.8.5 cannot share an environment with the bundle (it imports pydicom-seg, which needs
pydicom < 3; the bundle's DICOM SEG needs pydicom ≥ 3), so the app runs in its own environment and
calls these functions in the bundle's, through ``scripts/label_task.py``. Everything crosses as files:
a label map and a JSON result for inference, a JSON manifest of the datastore for training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from malignet_bundle.atomic_io import write_atomic, write_json_atomic
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.label_store import datalist_from_label_maps
from malignet_bundle.engines.inference import StudyInput
from malignet_bundle.outputs.label_map import study_label_map, write_label_map
from malignet_bundle.outputs.report import build_report

__all__ = ["infer_study", "train_on_datastore", "load_overrides"]

logger = logging.getLogger(__name__)


def _config(bundle_root: Path, name: str) -> Path:
    return bundle_root / "configs" / name


def _applicable(overrides: Mapping[str, Any] | None, config: Path) -> dict[str, Any]:
    """The overrides whose parent id exists in ``config``.

    One overrides file serves training and inference, and e.g. ``train#…`` keys have no place in
    ``inference.json``.
    """
    parser = ConfigParser()
    parser.read_config(str(config))
    kept = {}
    for key, value in (overrides or {}).items():
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is None or parent in parser:
            kept[key] = value
        else:
            logger.debug("override %s does not apply to %s", key, config.name)
    return kept


def infer_study(
    image: str | os.PathLike,
    output_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    score_threshold: float = 0.7,
    device: str | None = None,
) -> dict[str, Any]:
    """Run ``configs/inference.json``'s predictor on one study file; write ``label.nii.gz`` and ``result.json``.

    Args:
        image: the study's DICOM NM file (one or two views).
        output_dir: where the label map and the result go.
        bundle_root: the bundle (its ``configs/``).
        ckpt_dir: folder with ``model.pt`` and ``chest_detector.pt``.
        overrides: bundle config overrides for a non-default network (applied after the paths).
        score_threshold: detection confidence kept (thesis Table 11: 0.7).
        device: ``"cuda"``/``"cpu"``; default: the config's (cuda when there is one).

    Returns:
        The result: ``label_names``, ``shape`` (frames, rows, columns), ``score_threshold``, ``lesions``
        (report entries: id, view, class, score, box, centroid, area), ``metastasis`` and ``views``.
    """
    bundle_root, output_dir = Path(bundle_root), Path(output_dir)
    parser = ConfigParser()
    parser.read_config(str(_config(bundle_root, "inference.json")))
    parser["bundle_root"] = str(bundle_root)
    parser["ckpt_dir"] = str(ckpt_dir)
    parser["score_threshold"] = float(score_threshold)
    if device:
        parser["device"] = f"$torch.device('{device}')"
    for key, value in _applicable(overrides, _config(bundle_root, "inference.json")).items():
        parser[key] = value
    predictor = parser.get_parsed_content("predictor")
    class_map: ClassMap = parser.get_parsed_content("class_map")
    study_id = Path(image).name.removesuffix(".dcm")
    prediction = predictor.predict_study(StudyInput(study_id, [{"image": str(image), "view": None}]))
    frames = int(prediction.datasets[0].get("NumberOfFrames", 1) or 1)
    label_map = study_label_map(prediction, frames)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_label_map(label_map, prediction.spacing, output_dir / "label.nii.gz")
    report = build_report(prediction, class_map, mask_encoding=None)
    result = {
        "label_names": {name: k + 1 for k, name in enumerate(class_map.names)},
        "shape": list(label_map.shape),
        "score_threshold": float(score_threshold),
        "lesions": report["lesions"],
        "metastasis": report["metastasis"],
        "views": report["views"],
    }
    write_json_atomic(result, output_dir / "result.json")
    logger.info("%s: %d lesions at score >= %.2f", study_id, len(result["lesions"]), score_threshold)
    return result


def train_on_datastore(
    manifest: Mapping[str, Any],
    work_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    max_epochs: int = 10,
    batch_size: int = 4,
    learning_rate: float = 0.001,
    validation_fraction: float = 0.2,
    from_scratch: bool = False,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Fine-tune MaligNet on a datastore's final labels plus its unlabeled studies; then serve the new weights.

    Args:
        manifest: ``{"labeled": [[id, image, label map], ...], "unlabeled": [[id, image], ...]}``.
        work_dir: this training's folder (datalist, converted annotations, checkpoints, config used).
        bundle_root: the bundle (its ``configs/``).
        ckpt_dir: the served ``model.pt`` (start point unless ``from_scratch``; replaced when training ends)
            and ``chest_detector.pt``.
        overrides: bundle config overrides for a non-default network.
        max_epochs: epochs over the labeled views.
        batch_size: labeled (and unlabeled) views per iteration.
        learning_rate: Adam learning rate.
        validation_fraction: annotated studies held out to pick the best epoch.
        from_scratch: ignore the served weights.
        tracking: ``"mlflow"`` to log the run (store in ``work_dir``), else None.

    Returns:
        Counts of views used, epochs, the best validation mean F1, and where the model went.
    """
    bundle_root, work_dir, ckpt_dir = Path(bundle_root), Path(work_dir), Path(ckpt_dir)
    class_map = ClassMap.from_metadata(_config(bundle_root, "metadata.json"))
    labeled = [tuple(entry) for entry in manifest.get("labeled", [])]
    unlabeled = [tuple(entry) for entry in manifest.get("unlabeled", [])]
    datalist = datalist_from_label_maps(labeled, unlabeled, work_dir, class_map, validation_fraction)
    served = ckpt_dir / "model.pt"
    start = "" if from_scratch or not served.is_file() else str(served)
    config = {
        **_applicable(overrides, _config(bundle_root, "train.json")),
        "bundle_root": str(bundle_root),
        "dataset_dir": str(work_dir),
        "data_list_file_path": str(work_dir / "datalist.json"),
        "ckpt_dir": str(work_dir / "models"),
        "output_dir": str(work_dir),
        "chest_detector_path": str(ckpt_dir / "chest_detector.pt"),
        "epochs": int(max_epochs),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "initial_weights": start,
        "resume": False,
    }
    if not datalist["unlabeled"]:
        config["train#trainer#unlabeled_data_loader"] = None
        config["train#unlabeled_dataset#data"] = []
    write_json_atomic(config, work_dir / "overrides.json")
    logger.info(
        "training on %d labeled and %d unlabeled views (start: %s) in %s",
        len(datalist["labeled"]),
        len(datalist["unlabeled"]),
        start or "scratch",
        work_dir,
    )
    workflow = ConfigWorkflow(
        config_file=[str(_config(bundle_root, "train.json")), str(work_dir / "overrides.json")],
        meta_file=str(_config(bundle_root, "metadata.json")),
        logging_file=str(_config(bundle_root, "logging.conf")),
        run_id="training",
        tracking=tracking or None,
    )
    workflow.initialize()
    workflow.run()
    best = float(workflow.parser.get_parsed_content("validate#evaluator").state.best_metric)
    workflow.finalize()
    # the server reads the new weights only once they are whole
    write_atomic(served, lambda tmp: shutil.copyfile(work_dir / "models" / "model.pt", tmp))
    result = {
        "model": str(served),
        "work_dir": str(work_dir),
        "labeled_views": len(datalist["labeled"]),
        "validation_views": len(datalist["validation"]),
        "unlabeled_views": len(datalist["unlabeled"]),
        "epochs": int(max_epochs),
        "best_val_mean_f1": best,
        "started_from": start or "scratch",
    }
    write_json_atomic(result, work_dir / "result.json")
    return result


def load_overrides(path: str | os.PathLike | None) -> dict[str, Any]:
    """Bundle config overrides from a JSON file (``{}`` when no file is given)."""
    if not path:
        return {}
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file of config overrides ({e})") from e
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: config overrides must be a JSON object")
    return overrides

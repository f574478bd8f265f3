"""What the MONAI Label app asks of the bundle: lesions of one study, and a fine-tuning on a datastore.

MONAI Label 0.8.5 cannot share an environment with the bundle (it imports pydicom-seg, which needs
pydicom < 3; the bundle's DICOM SEG needs pydicom ≥ 3), so the app runs in its own environment and
calls these functions in the bundle's, through ``scripts/label_task.py``. Everything crosses as files:
a label map and a JSON result for inference, a JSON manifest of the datastore for training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.label_store import datalist_from_label_maps
from malignet_bundle.engines.inference import load_weights, predict_studies, state_dict_mismatch
from malignet_bundle.engines.operating_point import OperatingPoint, copy_model, read_operating_point
from malignet_bundle.networks.selection import (
    DEFAULT_NETWORK,
    check_network,
    inference_config_files,
    training_config_files,
)
from malignet_bundle.outputs.label_map import study_label_map, write_label_map
from malignet_bundle.outputs.report import build_report

__all__ = ["NetworkMismatchError", "infer_study", "train_on_datastore", "validation_f1", "load_overrides"]

logger = logging.getLogger(__name__)


def _config(bundle_root: Path, name: str) -> Path:
    return bundle_root / "configs" / name


class NetworkMismatchError(ValueError):
    """Weights that are not of the network the configs build: e.g. a MaligNet ``model.pt`` served as a U-Net."""


def _applicable(overrides: Mapping[str, Any] | None, configs: Sequence[Path]) -> dict[str, Any]:
    """The overrides whose parent id exists in ``configs`` (merged in order).

    One overrides file serves training and inference, and e.g. ``train#…`` keys have no place in
    ``inference.json``.
    """
    parser = ConfigParser()
    parser.read_config([str(config) for config in configs])
    kept = {}
    for key, value in (overrides or {}).items():
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is None or parent in parser:
            kept[key] = value
        else:
            logger.debug("override %s does not apply to %s", key, " + ".join(c.name for c in configs))
    return kept


def _weights_mismatch(network: torch.nn.Module, weights: Path) -> str | None:
    """:func:`~malignet_bundle.engines.inference.state_dict_mismatch` of the file; None when it cannot be read."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # not a checkpoint at all: the loader's own error names the file and says so
        return None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return state_dict_mismatch(network, state) if isinstance(state, Mapping) else None


def _check_weights_fit(
    network: torch.nn.Module, weights: Path, network_name: str, configs: Sequence[Path], error: BaseException
) -> None:
    """Raise :class:`NetworkMismatchError` (from ``error``) when ``weights`` are not of ``network``'s kind.

    Raises:
        NetworkMismatchError: naming the file, the network and what differs.
    """
    mismatch = _weights_mismatch(network, weights)
    if mismatch is None:
        return
    raise NetworkMismatchError(
        f"{weights}: not weights of network {network_name!r} as {' + '.join(c.name for c in configs)} (and the "
        f"overrides) build it: {mismatch}. Serve a model with the network and size it was trained with "
        f"(MONAI Label: --conf network, --conf overrides), or train this network from scratch"
    ) from error


def _parsed_network(parser: ConfigParser) -> torch.nn.Module | None:
    """The config's ``network`` as already built (after a failed ``initialize``), or None if it cannot be."""
    try:
        return parser.get_parsed_content("network")
    except Exception:  # the network itself failed to build: that error stands
        return None


def infer_study(
    image: str | os.PathLike,
    output_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    score_threshold: float | None = None,
    device: str | None = None,
    network: str = DEFAULT_NETWORK,
) -> dict[str, Any]:
    """Run ``configs/inference.json``'s evaluator on one study file; write ``label.nii.gz`` and ``result.json``.

    The bundle's inference workflow (its ``initialize`` loads the weights) without its file writers: the
    study's prediction becomes a class label map of the whole file and a lesion list instead. MaligNet runs
    ``inference.json`` alone; another network ``train.json``, ``inference.json`` and its own configs
    (:func:`~malignet_bundle.networks.selection.inference_config_files`): a pixel-level network's label map
    is its argmax inside each chest crop, and each region one lesion scored by its mean foreground probability.

    Args:
        image: the study's DICOM NM file (one or two views).
        output_dir: where the label map and the result go.
        bundle_root: the bundle (its ``configs/``).
        ckpt_dir: folder with ``model.pt`` and ``chest_detector.pt``.
        overrides: bundle config overrides for a non-default network (applied after the paths).
        score_threshold: detection confidence kept; None (the default): the served model's operating
            threshold, stored beside it in ``model.json`` when it was trained (0.7, thesis Table 11, without one).
        device: ``"cuda"``/``"cpu"``; default: the config's (cuda when there is one).
        network: the served network, one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Returns:
        The result: ``label_names``, ``shape`` (frames, rows, columns), ``score_threshold`` (the one used),
        ``operating_point`` (``threshold``, ``origin``: override/validation/default, ``source`` in words),
        ``lesions`` (report entries: id, view, class, score, box, centroid, area), ``metastasis`` and ``views``.

    Raises:
        InputFileError: naming the file and the reason, when the study cannot be read.
        NetworkMismatchError: naming ``model.pt`` and the network, when the served weights are another
            network's (or another size's).
        ValueError: for an unknown network.
    """
    bundle_root, output_dir = Path(bundle_root), Path(output_dir)
    configs = inference_config_files(network, bundle_root / "configs")
    paths: dict[str, Any] = {
        "bundle_root": str(bundle_root),
        "ckpt_dir": str(ckpt_dir),
        "score_threshold": None if score_threshold is None else float(score_threshold),
        "input": str(image),  # one study: every view of the file
        "handlers": [],  # no report, overlay or SEG: the label map and the result below are the outputs
    }
    if device:
        paths["device"] = f"$torch.device('{device}')"
    workflow = ConfigWorkflow(
        config_file=[str(config) for config in configs],
        # the class map and class count come from the metadata ID (``@_meta_``)
        meta_file=str(_config(bundle_root, "metadata.json")),
        logging_file=False,
        workflow_type="infer",
        **{**paths, **_applicable(overrides, configs)},
    )
    try:
        workflow.initialize()  # builds the network and loads model.pt into it
    except Exception as e:
        built = _parsed_network(workflow.parser)
        if built is not None:
            checkpoint = Path(workflow.parser.get_parsed_content("checkpoint"))
            _check_weights_fit(built, checkpoint, network, configs, e)
        raise
    (prediction,) = predict_studies(workflow.evaluator)
    operating_point: OperatingPoint = workflow.parser.get_parsed_content("operating_point")
    class_map: ClassMap = workflow.parser.get_parsed_content("class_map")
    workflow.finalize()
    frames = int(prediction.datasets[0].get("NumberOfFrames", 1) or 1)
    label_map = study_label_map(prediction, frames)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_label_map(label_map, prediction.spacing, output_dir / "label.nii.gz")
    report = build_report(prediction, class_map, class_map.malignant_label, mask_encoding=None)
    result = {
        "label_names": {name: k + 1 for k, name in enumerate(class_map.names)},
        "shape": list(label_map.shape),
        "score_threshold": operating_point.threshold,
        "operating_point": operating_point.as_dict(),
        "lesions": report["lesions"],
        "metastasis": report["metastasis"],
        "views": report["views"],
    }
    write_json_atomic(result, output_dir / "result.json")
    logger.info(
        "%s: %d lesions at score >= %.2f (%s)",
        prediction.study_id,
        len(result["lesions"]),
        operating_point.threshold,
        operating_point.source,
    )
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
    network: str = DEFAULT_NETWORK,
) -> dict[str, Any]:
    """Fine-tune a network on a datastore's final labels plus its unlabeled studies; serve it unless it is worse.

    The network is MaligNet unless told (``network``: its config files merged after ``train.json``, then the
    overrides, :func:`~malignet_bundle.networks.selection.training_config_files`); the semi-supervised method
    comes with the overrides (:func:`~malignet_bundle.semi_supervised.selection.method_overrides`).

    The new model (the training's best by validation mean F1) replaces the served ``model.pt`` only when its
    validation mean F1 is not worse than the served model's, both evaluated by :func:`validation_f1` on this
    training's validation split: a metric recorded by an earlier training would be on another split, since
    the split grows with every saved label. Otherwise the served file is left untouched and the new model
    is written beside it as ``model_candidate_<time>.pt``. The model's operating threshold (``model.json``,
    chosen in that training's validation) goes with it, written after the model.

    Args:
        manifest: ``{"labeled": [[id, image, label map], ...], "unlabeled": [[id, image], ...]}``.
        work_dir: this training's folder (datalist, converted annotations, checkpoints, config used).
        bundle_root: the bundle (its ``configs/``).
        ckpt_dir: the served ``model.pt`` (start point unless ``from_scratch``; replaced when the training
            ends with a model that is not worse on validation) and ``chest_detector.pt``.
        overrides: bundle config overrides for a non-default network.
        max_epochs: epochs over the labeled views.
        batch_size: labeled (and unlabeled) views per iteration.
        learning_rate: Adam learning rate.
        validation_fraction: annotated studies held out to pick the best epoch.
        from_scratch: ignore the served weights.
        tracking: ``"mlflow"`` to log the run (store in ``work_dir``), else None.
        network: the network trained and served, one of :data:`~malignet_bundle.networks.selection.NETWORKS`.

    Returns:
        ``replaced`` (bool), ``candidate`` (the kept model's path, or None), ``decision`` (why, in words),
        ``val_mean_f1`` and ``served_val_mean_f1`` (None without a served model) on the validation split
        (each model's mean F1 at the threshold it chooses there, :func:`validation_f1`), the new model's
        ``operating_threshold`` (None if it has no ``model.json``),
        the counts of views used, epochs, the training's best validation mean F1, and ``model`` (the
        served file).

    Raises:
        RuntimeError: when the training saved no model (no validation ran).
        NetworkMismatchError: naming ``model.pt`` and the network, when the served weights to start from are
            another network's (or another size's).
        ValueError: for an unknown network.
    """
    bundle_root, work_dir, ckpt_dir = Path(bundle_root), Path(work_dir), Path(ckpt_dir)
    network_configs = training_config_files(check_network(network), bundle_root / "configs")
    class_map = ClassMap.from_metadata(_config(bundle_root, "metadata.json"))
    labeled = [tuple(entry) for entry in manifest.get("labeled", [])]
    unlabeled = [tuple(entry) for entry in manifest.get("unlabeled", [])]
    datalist = datalist_from_label_maps(labeled, unlabeled, work_dir, class_map, validation_fraction)
    served = ckpt_dir / "model.pt"
    start = "" if from_scratch or not served.is_file() else str(served)
    config = {
        **_applicable(overrides, network_configs),
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
        # written above from studies read and checked one by one; with a single annotated study it is both
        # the training and the validation split on purpose, which the data check would call a leak
        "datalist": "$malignet_bundle.data.datalist.load_datalist(@data_list_file_path)",
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
    config_files = [*(str(config) for config in network_configs), str(work_dir / "overrides.json")]
    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=str(_config(bundle_root, "metadata.json")),
        logging_file=str(_config(bundle_root, "logging.conf")),
        run_id="training",
        tracking=tracking or None,
    )
    try:
        workflow.initialize()  # loads the served model.pt as the start unless from_scratch
    except Exception as e:
        built = _parsed_network(workflow.parser) if start else None
        if built is not None:
            _check_weights_fit(built, Path(start), network, network_configs, e)
        raise
    workflow.run()
    best = float(workflow.parser.get_parsed_content("validate#evaluator").state.best_metric)
    workflow.finalize()
    trained = work_dir / "models" / "model.pt"
    if not trained.is_file():
        raise RuntimeError(
            f"{trained}: the training saved no best model; validation runs every val_interval epochs, "
            f"so give at least that many epochs (max_epochs={max_epochs})"
        )
    served_f1, served_error = None, None
    if served.is_file():
        try:
            served_f1 = validation_f1(config_files, served, network)
        except NetworkMismatchError as e:  # e.g. a MaligNet served while a U-Net trains from scratch
            served_error = str(e)
        except Exception as e:
            served_error = f"{type(e).__name__}: {str(e)[:300]}"
    trained_f1 = validation_f1(config_files, trained, network)
    replace, decision = _replace_decision(trained_f1, served_f1, served_error, len(datalist["validation"]))
    if replace:
        # the server reads the new weights only once they are whole, and their threshold only after them
        copy_model(trained, served)
        candidate = None
    else:
        candidate = _candidate_path(ckpt_dir)
        copy_model(trained, candidate)
        decision += f"; the new model is kept beside it as {candidate.name}"
    stored = read_operating_point(trained)
    logger.info("%s", decision)
    result = {
        "model": str(served),
        "replaced": replace,
        "candidate": str(candidate) if candidate else None,
        "decision": decision,
        "val_mean_f1": trained_f1,
        "served_val_mean_f1": served_f1,
        "operating_threshold": stored["operating_threshold"] if stored else None,
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


def validation_f1(
    config_files: Sequence[str | os.PathLike], weights: str | os.PathLike, network: str = DEFAULT_NETWORK
) -> float:
    """The key validation metric of a model file on the validation split of a training config.

    The training's own evaluator config (``validate#…``: data, transforms, metric, device) with the given
    weights, and without its handlers, so the evaluation writes nothing. Two models evaluated by this on the
    same config are compared on the same views by the same metric: with ``train.json``'s
    ``val_operating_mean_f1``, each model's mean F1 at the confidence threshold it does best at on these
    views (the one it would store), not both at a fixed 0.7.

    Args:
        config_files: the training's config files (``train.json``, the network's configs, the overrides).
        weights: ``model.pt`` (a state dict) or a training checkpoint.
        network: the name of the network ``config_files`` build, for the error about weights of another.

    Raises:
        NetworkMismatchError: naming the file and the network, when the weights are another network's.
        RuntimeError: from loading weights that do not fit the configured network otherwise.
    """
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser["validate#handlers"] = []
    key = next(iter(parser["validate#key_metric"]))
    built = parser.get_parsed_content("network")
    try:
        load_weights(built, weights)
    except Exception as e:
        _check_weights_fit(built, Path(weights), network, [Path(f) for f in config_files], e)
        raise
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return float(evaluator.state.metrics[key])


def _replace_decision(
    trained_f1: float, served_f1: float | None, served_error: str | None, views: int
) -> tuple[bool, str]:
    """Whether the new model replaces the served one, and why, in words for the train response."""
    if served_error is not None:
        return False, f"the served model was not replaced: it could not be evaluated on this network ({served_error})"
    if served_f1 is None:
        return True, f"no model was served: the new model (validation mean F1 {trained_f1:.4f}) is served"
    if math.isnan(served_f1) or trained_f1 >= served_f1:
        return True, (
            f"the new model is served: validation mean F1 {trained_f1:.4f} is not worse than the served "
            f"model's {served_f1:.4f} on the same {views} validation views"
        )
    return False, (
        f"the served model was not replaced: the new model's validation mean F1 {trained_f1:.4f} is worse "
        f"than the served model's {served_f1:.4f} on the same {views} validation views"
    )


def _candidate_path(ckpt_dir: Path) -> Path:
    """``model_candidate_<time>.pt`` in ``ckpt_dir``, not yet taken."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    path, k = ckpt_dir / f"model_candidate_{stamp}.pt", 1
    while path.exists():
        path, k = ckpt_dir / f"model_candidate_{stamp}_{k}.pt", k + 1
    return path


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

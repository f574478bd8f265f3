"""The model zoo's per-bundle test: train, evaluate and infer through ``monai.bundle.ConfigWorkflow``.

As the zoo's ``ci/unit_tests/test_<bundle>.py`` (``check_workflow``): each workflow is built by
``ConfigWorkflow`` with its ``workflow_type``, initialised, checked by ``check_properties()`` (no required
property missing, no optional property under a wrong ID), run and finalised, here on a tiny synthetic
dataset with the CPU-sized network (``configs/cpu.json``) at 96 px, for one epoch. The evaluation merges
``evaluate.json`` after ``train.json`` and is checked as a ``train`` workflow, as the zoo does for such
merged configs. Then what each workflow wrote is checked.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigWorkflow

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.chest_detector import train_chest_detector
from malignet_bundle.outputs.dicom_seg import read_dicom_seg_masks

from .conftest import ROOT

CONFIGS = ROOT / "configs"
# the tiny run: what tests/test_bundle_training.py gives the bundle runner, here as ConfigWorkflow overrides
TINY = {"epochs": 1, "image_size": 96, "batch_size": 2, "bf16_on_cpu": False, "device": "$torch.device('cpu')"}


def _workflow(workflow_type: str, configs: list[str], **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(CONFIGS / name) for name in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        **overrides,
    )


def _check_workflow(workflow: ConfigWorkflow) -> list | None:
    """The zoo's ``check_workflow``: initialise, check the properties, run, finalise; returns the check's result."""
    workflow.initialize()
    missing = workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return missing


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, class_map):
    """A tiny dataset, a chest detector, and MaligNet trained one epoch by ``train.json`` + ``cpu.json``."""
    from malignet_bundle.data.synthesize import write_dataset

    root = tmp_path_factory.mktemp("bundle_workflows")
    write_dataset(root / "data", labeled=2, unlabeled=2, validation=1, test=1, seed=23, progress=False)
    datalist = load_datalist(root / "data" / "datalist.json")
    (root / "models").mkdir()
    train_chest_detector(
        datalist,
        root / "data",
        class_map,
        root / "models" / "chest_detector.pt",
        epochs=1,
        batch_size=4,
        progress=False,
    )
    paths = {
        "bundle_root": str(ROOT),
        "dataset_dir": str(root / "data"),
        "ckpt_dir": str(root / "models"),
        "chest_detector_path": str(root / "models" / "chest_detector.pt"),
        "output_dir": str(root / "runs"),
    }
    torch.manual_seed(0)
    trained = _check_workflow(_workflow("train", ["train.json", "cpu.json"], **paths, **TINY))
    return {"root": root, "paths": paths, "train_missing": trained}


def test_train_workflow_has_every_property_and_saves_the_model(bundle):
    assert not bundle["train_missing"], bundle["train_missing"]
    models = bundle["root"] / "models"
    assert (models / "model.pt").is_file() and (models / "model.json").is_file()
    stored = json.loads((models / "model.json").read_text())
    assert 0.0 < stored["operating_threshold"] < 1.0 and stored["epoch"] == 1
    assert list(models.glob("latest_checkpoint_epoch=1*.pt"))


def test_evaluate_workflow_has_every_property_and_writes_the_report(bundle):
    workflow = _workflow("train", ["train.json", "cpu.json", "evaluate.json"], **bundle["paths"], **TINY)
    assert not _check_workflow(workflow)
    metrics = json.loads((bundle["root"] / "runs" / "evaluation" / "metrics.json").read_text())
    assert metrics["detail"]["images"] == 2  # the test study's two views
    names = {p.name for p in (bundle["root"] / "runs" / "evaluation").iterdir()}
    assert {"metrics.json", "per_image.csv", "metrics.md"} <= names


def test_infer_workflow_has_every_property_and_writes_every_output(bundle, class_map):
    root = bundle["root"]
    out = root / "runs" / "inference"
    overrides = {**bundle["paths"], **TINY, "output_dir": str(out), "score_threshold": 0.0, "progress": False}
    workflow = _workflow("infer", ["inference.json", "cpu.json"], **overrides)
    assert _check_workflow(workflow) == []
    assert workflow.evaluator is workflow.parser.get_parsed_content("evaluator")
    (study,) = load_datalist(root / "data" / "datalist.json")["test"][:1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"written": [study["patient_id"]], "skipped": []}
    folder = out / study["patient_id"]
    report = json.loads((folder / "report.json").read_text())
    assert report["model"]["checkpoint"] == str(root / "models" / "model.pt")
    assert report["model"]["operating_point"]["origin"] == "override" and report["model"]["score_threshold"] == 0.0
    assert [view["view"] for view in report["views"]] == ["anterior", "posterior"]
    assert (folder / "overlay.png").stat().st_size > 0
    for view in ("anterior", "posterior"):
        reported = [lesion for lesion in report["lesions"] if lesion["view"] == view]
        classes = json.loads((folder / f"{view}_instances.classes.json").read_text())
        assert classes == {lesion["id"].split("-")[1]: lesion["class_name"] for lesion in reported}
        assert len(load_annotation(folder / f"{view}_instances.nii.gz", (1024, 256)).masks) <= len(reported)
        _, _, masks = read_dicom_seg_masks(folder / f"seg_{view}.dcm")
        assert masks.shape == (1024, 256, class_map.num_classes) and masks.any() == bool(reported)

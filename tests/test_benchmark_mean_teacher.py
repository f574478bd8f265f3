"""The benchmark's mean-teacher rows (fpn_mt, malignet_mt): planned on request in every sweep, trained end to end."""

from __future__ import annotations

import json

import numpy as np

from malignet_bundle.experiments.ssl_benchmark import (
    PROFILES,
    VARIANTS,
    RunSpec,
    _config_files,
    plan_runs,
    run_overrides,
)

from .conftest import run_script


def test_mean_teacher_rows_join_every_sweep_only_when_asked_for():
    profile = PROFILES["cpu"]
    default = plan_runs(profile, ["table4", "labeled", "unlabeled", "why"], seeds=[0])
    assert not any(VARIANTS[r.variant].mean_teacher for r in default)
    asked = plan_runs(profile, ["table4", "labeled", "unlabeled", "why"], seeds=[0], variants=["fpn_mt", "malignet_mt"])
    names = {r.name for r in asked}
    assert {"fpn_mt-l1-u1-s0", "malignet_mt-l1-u1-s0"} <= names  # Table 4 and the why sweep's references
    assert {"fpn_mt-l0.25-u1-s0", "malignet_mt-l0.5-u1-s0"} <= names  # the labeled sweep
    assert {"fpn_mt-l1-u0-s0", "malignet_mt-l1-u0.25-s0"} <= names  # the unlabeled sweep: both read unlabeled
    assert {r.variant for r in asked} == {"fpn_mt", "malignet_mt"}


def test_mean_teacher_rows_wire_their_configs(tmp_path):
    profile = PROFILES["smoke"]
    views = [{"image": f"P{i}.dcm", "view": "anterior", "patient_id": f"P{i}"} for i in range(4)]
    datalist = {"labeled": views, "unlabeled": views, "validation": [], "test": []}
    kwargs = dict(dataset_dir=tmp_path, run_dir=tmp_path / "r", chest_detector=tmp_path / "c.pt", cache_dir=tmp_path)
    fpn_mt = run_overrides(RunSpec("fpn_mt", 0), profile, datalist=datalist, **kwargs)
    assert [f.name for f in _config_files(RunSpec("fpn_mt", 0))] == ["train.json", "baseline.json", "mean_teacher.json"]
    assert [f.name for f in _config_files(RunSpec("malignet_mt", 0))] == ["train.json", "mean_teacher.json"]
    assert fpn_mt["mean_teacher_burn_in"] == 1 and fpn_mt["network_def#global_features"] is False
    assert "drop_unreadable" in fpn_mt["train#unlabeled_dataset"]["data"]  # baseline.json's [] undone
    assert "mean_teacher_burn_in" not in run_overrides(RunSpec("fpn", 0), profile, datalist=datalist, **kwargs)
    no_unlabeled = {**datalist, "unlabeled": []}
    u0 = run_overrides(RunSpec("malignet_mt", 0, 1.0, 0.0), profile, datalist=no_unlabeled, **kwargs)
    assert u0["train#trainer#unlabeled_data_loader"] is None


def test_smoke_profile_trains_and_evaluates_the_mask_rcnn_teacher_row(tmp_path):
    """fpn_mt end to end (train.json + baseline.json + mean_teacher.json) on the smoke profile.

    malignet_mt's two configs are trained by tests/test_bundle_training.py; one run keeps this test short.
    """
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--profile", "smoke", "--output_dir", out, "--dataset_dir", data)
    done = run_script("benchmark_ssl", *args, "--sweeps", "table4", "--seeds", "0", "--variants", "fpn_mt")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    (result,) = report["runs"]
    assert result["name"] == "fpn_mt-l1-u1-s0" and result["unlabeled_views"] > 0
    assert np.isfinite(result["metrics"]["test_mean_f1"])
    assert "| Mask R-CNN + mean teacher |" in (out / "results.md").read_text()
    overrides = json.loads((out / "runs" / "steps2" / "fpn_mt-l1-u1-s0" / "overrides.json").read_text())
    assert overrides["mean_teacher_burn_in"] == 1  # the smoke profile's teacher starts after one step


def test_warm_mean_teacher_starts_from_the_trained_mask_rcnn_of_its_seed(tmp_path):
    profile = PROFILES["cpu"]
    runs = plan_runs(profile, ["table4", "labeled"], seeds=[1], variants=["fpn_mt_warm"])
    names = [r.name for r in runs]
    for fraction in ("0.25", "0.5", "1"):  # each point after the Mask R-CNN it starts from
        assert names.index(f"fpn-l{fraction}-s1") < names.index(f"fpn_mt_warm-l{fraction}-u1-s1")
    # a mean-teacher change applies to the teacher-student row, not to the Mask R-CNN it starts from
    changed = RunSpec("fpn_mt_warm", 1, 0.5, variation="mt_threshold0.9")
    assert changed.teacher == RunSpec("fpn", 1, 0.5)
    assert RunSpec("malignet_st", 2, variation="global_channels32").teacher == RunSpec(
        "malignet", 2, variation="global_channels32"
    )
    assert RunSpec("fpn_mt", 0).teacher is None

    views = [{"image": f"P{i}.dcm", "view": "anterior", "patient_id": f"P{i}"} for i in range(8)]
    datalist = {"labeled": views, "unlabeled": views, "validation": [], "test": []}
    run_dir = tmp_path / "runs" / "fpn_mt_warm-l1-u1-s1"
    overrides = run_overrides(
        RunSpec("fpn_mt_warm", 1),
        profile,
        dataset_dir=tmp_path,
        run_dir=run_dir,
        chest_detector=tmp_path / "c.pt",
        cache_dir=tmp_path,
        datalist=datalist,
    )
    assert overrides["initial_weights"] == str(tmp_path / "runs" / "fpn-l1-s1" / "models" / "model.pt")
    assert overrides["mean_teacher_burn_in"] == 0  # the trained model teaches from the first step
    assert "pretrained_checkpoint" not in overrides  # that is self-training's labeler
    steps = overrides["epochs"] * overrides["train#trainer#epoch_length"]
    assert steps == profile.continuation_iterations  # as many more steps as the self-training student


def test_smoke_profile_trains_the_mask_rcnn_then_the_warm_started_teacher_row(tmp_path):
    """fpn_mt_warm end to end: the Mask R-CNN of its seed is trained first and its model.pt starts the row."""
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--profile", "smoke", "--output_dir", out, "--dataset_dir", data, "--results_dir", "none")
    done = run_script("benchmark_ssl", *args, "--sweeps", "table4", "--seeds", "0", "--variants", "fpn_mt_warm")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["fpn-l1-s0", "fpn_mt_warm-l1-u1-s0"]
    runs = out / "runs" / "steps2"
    overrides = json.loads((runs / "fpn_mt_warm-l1-u1-s0" / "overrides.json").read_text())
    start = runs / "fpn-l1-s0" / "models" / "model.pt"
    assert overrides["initial_weights"] == str(start) and overrides["mean_teacher_burn_in"] == 0
    # the bundle's load_weights raises on a missing or foreign checkpoint, so the run started from it
    assert start.is_file() and (runs / "fpn_mt_warm-l1-u1-s0" / "trained").is_file()
    assert "| Mask R-CNN + mean teacher from the trained Mask R-CNN |" in (out / "results.md").read_text()

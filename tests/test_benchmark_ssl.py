"""The semi-supervised benchmark: run planning, data subsets, and the smoke profile end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from malignet_bundle.experiments.ssl_benchmark import (
    CONFIG_DIR,
    MEAN_TEACHER_VARIANTS,
    PROFILES,
    VARIATIONS,
    RunSpec,
    _matching_overrides,
    aggregate,
    config_files,
    load_study_results,
    machine_slug,
    plan_runs,
    prepare_dataset,
    run_overrides,
    study_result_path,
    subset_datalist,
    write_report,
)

from .conftest import run_script


def _datalist(patients: int) -> dict[str, list[dict]]:
    def views(prefix: str, n: int) -> list[dict]:
        return [
            {"image": f"{prefix}{i}.dcm", "view": v, "patient_id": f"{prefix}{i}"}
            for i in range(n)
            for v in ("anterior", "posterior")
        ]

    return {"labeled": views("L", patients), "unlabeled": views("U", 4 * patients), "validation": [], "test": []}


def test_plan_runs_dedupes_and_puts_teachers_first():
    profile = PROFILES["cpu"]
    runs = plan_runs(profile)
    assert len(runs) == len(set(runs))
    per_seed = len(runs) // len(profile.seeds)
    # 5 Table 4 rows + 2 smaller labeled fractions × 2 models + 2 smaller unlabeled amounts
    assert per_seed == 5 + 2 * 2 + 2
    for k, run in enumerate(runs):
        if run.teacher is not None:
            assert run.teacher in runs[:k]
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # whole seeds first
    only_st = plan_runs(profile, ["table4"], seeds=[1], variants=["malignet_st"])
    assert [r.name for r in only_st] == ["malignet-l1-u1-s1", "malignet_st-l1-u1-s1"]
    with pytest.raises(ValueError, match="unknown sweeps"):
        plan_runs(profile, ["table5"])


def test_why_sweep_plans_each_change_beside_the_unchanged_runs():
    runs = plan_runs(PROFILES["cpu"], ["why"], seeds=[0])
    names = [r.name for r in runs]
    assert names[:2] == ["fpn-l1-s0", "malignet-l1-u1-s0"]  # the references, trained once with table4
    assert "fpn-l1-s0-steps3x" in names and "malignet-l1-u1-s0-noise0.1" in names
    supervised_or_ladder = [v for k in VARIATIONS.values() for v in k.variants if v not in MEAN_TEACHER_VARIANTS]
    assert len(runs) == 2 + len(supervised_or_ladder)  # the teacher-student changes only when those rows are asked
    # on demand only: the default run stays inside its 2.5-hour budget
    assert not any(r.variation for r in plan_runs(PROFILES["cpu"]))
    with pytest.raises(ValueError, match="unknown variation"):
        RunSpec("malignet", 0, variation="dropout")
    longer = plan_runs(PROFILES["cpu"], ["why"], seeds=[1], variations=["steps3x"])
    assert [r.name for r in longer] == [
        "fpn-l1-s1",
        "malignet-l1-u1-s1",
        "fpn-l1-s1-steps3x",
        "malignet-l1-u1-s1-steps3x",
    ]
    with pytest.raises(ValueError, match="unknown variations"):
        plan_runs(PROFILES["cpu"], ["why"], variations=["dropout"])
    capped = plan_runs(PROFILES["cpu"], ["why"], seeds=[2], variants=["fpn_mt"], variations=["mt_cap3"])
    assert [r.name for r in capped] == ["fpn_mt-l1-u1-s2", "fpn_mt-l1-u1-s2-mt_cap3"]


def test_named_changes_replace_the_recipe_of_their_rows_in_the_data_sweeps():
    cpu = PROFILES["cpu"]
    guarded = plan_runs(cpu, ["labeled"], seeds=[0], variants=["fpn", "fpn_mt"], variations=["mt_threshold0.9"])
    names = [r.name for r in guarded]
    # Mask R-CNN keeps its recipe; the mean teacher's curve is trained with the change only
    assert names == [
        "fpn-l0.25-s0",
        "fpn_mt-l0.25-u1-s0-mt_threshold0.9",
        "fpn-l0.5-s0",
        "fpn_mt-l0.5-u1-s0-mt_threshold0.9",
        "fpn-l1-s0",
        "fpn_mt-l1-u1-s0-mt_threshold0.9",  # the why sweep's run of the same name: trained once
    ]
    narrow = plan_runs(cpu, ["unlabeled"], seeds=[1], variations=["global_channels32"])
    assert [r.name for r in narrow] == [f"malignet-l1-u{f:g}-s1-global_channels32" for f in cpu.unlabeled_fractions]
    # without named changes the sweeps are the unchanged protocol, and Table 4 is never changed
    assert not any(r.variation for r in plan_runs(cpu, ["labeled", "unlabeled"], seeds=[0]))
    assert not any(r.variation for r in plan_runs(cpu, ["table4"], seeds=[0], variations=["global_channels32"]))


def test_variation_changes_only_what_it_names(tmp_path):
    profile = PROFILES["smoke"]
    kwargs = dict(
        profile=profile,
        dataset_dir=tmp_path,
        run_dir=tmp_path / "r",
        chest_detector=tmp_path / "c.pt",
        cache_dir=tmp_path / "cache",
        datalist=_datalist(2),
    )
    plain = run_overrides(RunSpec("malignet", 0), **kwargs)
    noisy = run_overrides(RunSpec("malignet", 0, variation="noise0.3"), **kwargs)
    assert noisy.pop("noise_ratio") == 0.3 and noisy == plain
    capped = run_overrides(RunSpec("fpn_mt", 0, variation="mt_cap3"), **kwargs)
    assert capped.pop("teacher_max_pseudo_lesions") == 3 and capped == run_overrides(RunSpec("fpn_mt", 0), **kwargs)
    longer = run_overrides(RunSpec("fpn", 0, variation="steps3x"), **kwargs)
    # 2 iterations per epoch (4 views, batch 2): the 2-iteration budget becomes 6, i.e. 3 epochs
    assert longer["epochs"] == 3 and longer["train#trainer#epoch_length"] == 2


def test_why_report_pairs_each_change_with_its_seed(tmp_path):
    def result(variant, seed, f1, variation=""):
        unlabeled = 1.0 if variant == "malignet" else 0.0
        run = {"variant": variant, "seed": seed, "labeled_fraction": 1.0, "unlabeled_fraction": unlabeled}
        return {
            "run": {**run, "variation": variation},
            "name": RunSpec(variant, seed, 1.0, unlabeled, variation).name,
            "trained_on": "machine A",
            "labeled_views": 8,
            "unlabeled_views": 8,
            "train_seconds": 60.0,
            "metrics": {"test_mean_f1": f1},
        }

    results = [
        result("malignet", 0, 0.1),
        result("malignet", 1, 0.5),
        result("malignet", 2, 0.9),  # no changed run on seed 2: left out of the comparison
        result("malignet", 0, 0.2, "noise0.3"),
        result("malignet", 1, 0.6, "noise0.3"),
        {**result("malignet", 0, 0.9), "run": {**result("malignet", 0, 0.9)["run"], "unlabeled_fraction": 0.0}},
    ]
    markdown = write_report(results, PROFILES["smoke"], tmp_path, "cmd")
    assert "Trained on: machine A." in markdown and "machines" not in markdown.split("###")[0]
    section = markdown.split("### Why")[1].split("### Evidence")[0]
    unchanged, changed = [line for line in section.splitlines() if line.startswith("| ResNet + LFPN")]
    assert "unchanged" in unchanged and "0.300 ± 0.283" in unchanged  # seeds 0 and 1 only, not u0 or seed 2
    assert "noise ratio 0.3" in changed and changed.endswith(" +0.100 | — |")  # paired: +0.1 on both seeds
    assert (tmp_path / "why.png").read_bytes()[:4] == b"\x89PNG"
    # the change against its unchanged row, with an interval over the two paired seeds (+0.1 on both)
    evidence = markdown.split("### Evidence: paired differences")[1]
    (paired,) = [
        line for line in evidence.splitlines() if "noise ratio 0.3" in line and "mean F1 at 0.7, class-agnostic" in line
    ]
    assert paired.startswith("| ResNet + LFPN w/ global features (MaligNet), LFPN noise ratio 0.3 vs ")
    assert " vs ResNet + LFPN w/ global features (MaligNet) |" in paired
    assert "| 2 (M1 2) | 0.400 | 0.300 | +0.100 |" in paired
    # the same change trained on another machine joins no pair of machine A: its section has no reference
    other = {**result("malignet", 2, 0.95, "noise0.3"), "trained_on": "machine B"}
    markdown = write_report([*results, other], PROFILES["smoke"], tmp_path, "cmd")
    assert "### Machine M1: machine A (6 runs)" in markdown and "### Machine M2: machine B (1 run)" in markdown
    assert (tmp_path / "why_m1.png").is_file() and (tmp_path / "why_m2.png").is_file()
    machine_b = markdown.split("### Machine M2")[1].split("### Evidence")[0]
    (changed_b,) = [line for line in machine_b.splitlines() if line.startswith("| ResNet + LFPN")]
    assert changed_b.endswith(" — | — |")  # no unchanged run of seed 2 on machine B: no paired difference


def test_evaluation_sets_the_matching_rule_of_every_lesion_metric():
    files = [CONFIG_DIR / "train.json", CONFIG_DIR / "baseline.json", CONFIG_DIR / "evaluate.json"]
    found = _matching_overrides(files, "per_class")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    assert set(found.values()) == {"per_class"} and all(k.endswith("#matching") for k in found)
    targets = sorted(parser[k.removesuffix("#matching")]["_target_"].rsplit(".", 1)[-1] for k in found)
    assert targets == ["LesionF1", "LesionMetrics"]  # the key metric and the full evaluation


def test_supervised_rows_ignore_the_unlabeled_fraction():
    assert RunSpec("fpn", 0, 1.0, 0.25) == RunSpec("fpn", 0, 1.0, 1.0)
    assert RunSpec("fpn", 0).name == "fpn-l1-s0"
    assert RunSpec("lfpn", 2, 0.5, 0.25).name == "lfpn-l0.5-u0.25-s2"
    with pytest.raises(ValueError, match="unknown variant"):
        RunSpec("resnet_unknown", 0)


def test_subsets_are_whole_patients_drawn_by_seed():
    datalist = _datalist(8)
    half = subset_datalist(datalist, RunSpec("fpn", 0, 0.5))
    patients = {item["patient_id"] for item in half["labeled"]}
    assert len(patients) == 4 and len(half["labeled"]) == 8  # both views of each patient
    # the same seed gives every variant the same scans; another seed gives others
    assert subset_datalist(datalist, RunSpec("malignet", 0, 0.5))["labeled"] == half["labeled"]
    others = {item["patient_id"] for item in subset_datalist(datalist, RunSpec("fpn", 1, 0.5))["labeled"]}
    assert others != patients
    none = subset_datalist(datalist, RunSpec("malignet", 0, 1.0, 0.0))
    assert none["unlabeled"] == [] and none["labeled"] == datalist["labeled"]


def test_overrides_wire_the_variant(tmp_path):
    profile = PROFILES["smoke"]
    datalist = _datalist(2)
    kwargs = dict(dataset_dir=tmp_path, run_dir=tmp_path / "runs" / "x", chest_detector=tmp_path / "c.pt")
    fpn = run_overrides(RunSpec("fpn", 0), profile, cache_dir=tmp_path / "cache", datalist=datalist, **kwargs)
    assert fpn["network_def#global_features"] is False
    assert fpn["train#dataset"]["_target_"] == "PersistentDataset"
    assert fpn["validate#dataset"]["cache_dir"] != fpn["train#dataset"]["cache_dir"]
    # 4 labeled views, batch 2 → 2 iterations per epoch; 2 iterations → 1 epoch, validated once at its end
    assert fpn["epochs"] == 1 and fpn["val_interval"] == 1 and fpn["train#trainer#epoch_length"] == 2
    no_unlabeled = {**datalist, "unlabeled": []}
    u0 = run_overrides(RunSpec("malignet", 0, 1.0, 0.0), profile, cache_dir=tmp_path, datalist=no_unlabeled, **kwargs)
    assert u0["train#trainer#unlabeled_data_loader"] is None
    st = run_overrides(RunSpec("malignet_st", 3), profile, cache_dir=tmp_path, datalist=datalist, **kwargs)
    assert st["pretrained_checkpoint"].endswith("malignet-l1-u1-s3/models/model.pt")
    assert st["train#dataset"]["datasets"][0]["_target_"] == "PersistentDataset"
    # self-training's epochs hold pseudo-labeled scans too; the step budget still counts labeled batches
    assert st["train#trainer#epoch_length"] == 2 and st["epochs"] == 1


def test_pixel_level_rows_replace_the_detector_after_the_profiles_speed_settings(tmp_path):
    cpu = PROFILES["cpu"]
    assert plan_runs(cpu, ["table4"], seeds=[0], variants=["unet"]) == [RunSpec("unet", 0)]
    assert not any(r.variant.endswith("unet") or r.variant == "unet_mt" for r in plan_runs(cpu, seeds=[0]))
    names = {v: [f.name for f in config_files(RunSpec(v, 0), cpu)] for v in ("unet", "unet_mt", "double_unet")}
    # cpu.json sizes the detector's network_def: segmentation.json, merged after it, replaces that whole
    assert names["unet"] == ["train.json", "cpu.json", "segmentation.json"]
    assert names["unet_mt"] == ["train.json", "cpu.json", "segmentation.json", "segmentation_mean_teacher.json"]
    assert names["double_unet"] == ["train.json", "cpu.json", "segmentation.json", "double_unet.json"]
    assert RunSpec("unet", 0, 1.0, 1.0).unlabeled_fraction == 0.0  # a plain U-Net reads no unlabeled scans
    datalist = _datalist(2)
    kwargs = dict(dataset_dir=tmp_path, run_dir=tmp_path / "runs" / "x", chest_detector=tmp_path / "c.pt")
    smoke = PROFILES["smoke"]
    teacher = run_overrides(RunSpec("unet_mt", 0), cpu, cache_dir=tmp_path, datalist=datalist, **kwargs)
    assert not any(key.startswith("network_def#") for key in teacher)  # no anchors, backbone or global features
    assert "mean_teacher_burn_in" not in teacher  # the detector teacher's schedule is not the U-Net's
    assert teacher["consistency_ramp_up"] == round(0.4 * cpu.iterations) and teacher["ema_decay"] == 0.99
    assert teacher["train#unlabeled_dataset"]["_target_"] == "PersistentDataset"  # it reads unlabeled crops
    double = run_overrides(RunSpec("double_unet", 0), smoke, cache_dir=tmp_path, datalist=datalist, **kwargs)
    assert double["segmentation_features"] == [8, 16, 32]  # double_unet.json's entry wins over segmentation.json's


def test_data_of_another_generator_version_is_refused_and_never_reported(tmp_path):
    smoke = PROFILES["smoke"]
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "datalist.json").write_text(json.dumps(_datalist(1)))
    (dataset / "dataset.json").write_text(json.dumps({"generator_version": 1}))
    with pytest.raises(ValueError, match=r"dataset\.json: made by synthetic generator version 1"):
        prepare_dataset(smoke, dataset, tmp_path / "chest.pt", CONFIG_DIR / "metadata.json")
    assert not (tmp_path / "chest.pt").exists()  # refused before any training
    results = tmp_path / "study"
    for version, seed in ((2, 0), (1, 1), (None, 2)):
        run = RunSpec("fpn", seed)
        result = {"run": {"variant": "fpn", "seed": seed}, "name": run.name, "metrics": {}, "steps": 2}
        if version is not None:
            result["generator_version"] = version
        path = study_result_path(results, "machine A", smoke, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    # version 2 kept; version 1 and a result from before versions were recorded (version 1) left out
    assert [r["name"] for r in load_study_results(results, smoke)] == ["fpn-l1-s0"]


def test_aggregate_mean_and_sample_sd():
    results = [
        {
            "run": {"variant": "fpn", "seed": s, "labeled_fraction": 1.0, "unlabeled_fraction": 0.0},
            "labeled_views": 4,
            "unlabeled_views": 0,
            "train_seconds": 60.0,
            "metrics": {"test_mean_f1": f},
        }
        for s, f in ((0, 0.2), (1, 0.4), (2, 0.6))
    ]
    (row,) = aggregate(results)
    assert row["test_mean_f1"] == pytest.approx(0.4)
    assert row["test_mean_f1_std"] == pytest.approx(0.2)
    assert row["seeds"] == [0, 1, 2]
    assert np.isnan(row["test_ap50"])  # absent metrics stay visible as nan, never as 0


def test_smoke_profile_end_to_end_and_resumes(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--profile", "smoke", "--output_dir", out, "--dataset_dir", data)
    first = run_script("benchmark_ssl", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert len(runs) == 16  # 8 runs × 2 seeds
    for result in runs.values():
        assert np.isfinite(result["metrics"]["test_mean_f1"])
    assert runs["malignet-l1-u0-s0"]["unlabeled_views"] == 0
    assert runs["malignet-l0.5-u1-s1"]["labeled_views"] == runs["fpn-l0.5-s1"]["labeled_views"] == 4
    variants = {(r["variant"], r["labeled_fraction"], r["unlabeled_fraction"]) for r in report["rows"]}
    assert ("malignet_st", 1.0, 1.0) in variants and ("malignet", 1.0, 0.0) in variants
    markdown = (out / "results.md").read_text()
    assert "Table 4 ablation" in markdown and "±" in markdown
    machine = runs["fpn-l1-s0"]["trained_on"]
    assert torch.backends.cpu.get_cpu_capability() in machine and f"Trained on: {machine}." in markdown
    # the study's record: budget, configs, speed settings, both matching rules, and a copy kept per machine
    fpn = runs["fpn-l1-s0"]
    # a budget of 2 steps, rounded up to one whole epoch of 8 labeled views in batches of 2
    assert fpn["steps"] == 2 and fpn["iterations"] == 4 and fpn["matching"] == "class_agnostic"
    assert fpn["config_files"] == ["train.json", "baseline.json"] and fpn["speed_settings"]["bf16_on_cpu"] is False
    assert fpn["metrics"]["test_mean_f1"] == fpn["metrics"]["test_mean_f1_class_agnostic_matching"]
    assert "test_mean_f1_per_class_matching" in fpn["metrics"]
    kept = out / "study" / machine_slug(machine) / "smoke" / "steps2" / "fpn-l1-s0.json"
    assert json.loads(kept.read_text()) == fpn
    assert len(list((out / "study").glob("*/smoke/steps2/*.json"))) == 16
    assert (
        "### Evidence: paired differences" in markdown
        and "| ResNet + LFPN w/ global features (MaligNet) vs" in markdown
    )
    assert "Table 4 under both matching rules" in markdown and "Step budget: 2 labeled-batch iterations" in markdown
    curve = runs["fpn-l1-s0"]["score_threshold_curve"]
    assert len(curve["thresholds"]) == len(curve["mean_f1"]) and curve["best_mean_f1"] == max(curve["mean_f1"])
    for plot in ("labeled_sweep.png", "unlabeled_sweep.png", "threshold_curves.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    # every run can be repeated on its own: its datalist and override config are beside its result
    overrides = json.loads((out / "runs" / "steps2" / "malignet_st-l1-u1-s0" / "overrides.json").read_text())
    assert overrides["pretrained_checkpoint"].endswith("steps2/malignet-l1-u1-s0/models/model.pt")

    fpn_dir = out / "runs" / "steps2" / "fpn-l1-s0"
    stamp = (fpn_dir / "result.json").stat().st_mtime_ns
    again = run_script("benchmark_ssl", *args, "--seeds", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (fpn_dir / "result.json").stat().st_mtime_ns == stamp  # skipped, not retrained
    assert "Epoch[" not in again.stdout + again.stderr  # no engine ran

    before = json.loads((fpn_dir / "result.json").read_text())
    only = ("--seeds", "0", "--sweeps", "table4", "--variants", "fpn")
    third = run_script("benchmark_ssl", *args, *only, "--reevaluate", "--matching", "per_class")
    assert third.returncode == 0, third.stderr[-3000:]
    after = json.loads((fpn_dir / "result.json").read_text())
    assert (fpn_dir / "result.json").stat().st_mtime_ns != stamp  # evaluated again ...
    assert after["train_seconds"] == before["train_seconds"]  # ... with the trained model, not retrained
    assert after["trained_on"] == before["trained_on"]
    assert "loss:" not in third.stdout + third.stderr
    # evaluated under the per-class rule: its headline names follow it, both rules stay recorded
    assert after["matching"] == "per_class"
    assert after["metrics"]["test_mean_f1"] == after["metrics"]["test_mean_f1_per_class_matching"]
    assert after["metrics"]["test_mean_f1_class_agnostic_matching"] == before["metrics"]["test_mean_f1"]

    # the global-context ablation reads a finished run again: as trained it reproduces the run's evaluation,
    # and the run's folder is left as it was
    malignet_dir = out / "runs" / "steps2" / "malignet-l1-u1-s0"
    files_before = {p: p.stat().st_mtime_ns for p in malignet_dir.rglob("*") if p.is_file()}
    ablation = run_script("ablate_global_context", "--run_dirs", malignet_dir, "--output_dir", out / "context")
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    probed = json.loads((out / "context" / "malignet-l1-u1-s0" / "global_context.json").read_text())
    stored = runs["malignet-l1-u1-s0"]["metrics"]
    assert probed["modes"]["as_trained"] == {k: stored[k] for k in probed["modes"]["as_trained"]}
    assert set(probed["modes"]) == {"as_trained", "mean", "swapped"} and probed["images"] >= 2
    assert {p: p.stat().st_mtime_ns for p in malignet_dir.rglob("*") if p.is_file()} == files_before
    assert "| malignet-l1-u1-s0 |" in (out / "context" / "global_context.md").read_text()

    # a fresh clone holds only the kept results: the run is not trained again, and the report is rebuilt
    shutil.rmtree(out / "runs")
    fourth = run_script("benchmark_ssl", *args, *only)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "Epoch[" not in fourth.stdout + fourth.stderr and not (fpn_dir / "result.json").exists()
    rebuilt = run_script("benchmark_ssl", *args, "--report_only")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 16


def test_smoke_profile_reads_the_pixel_level_rows_by_both_protocols(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--profile", "smoke", "--output_dir", out, "--dataset_dir", data, "--sweeps", "table4", "--seeds", "0")
    done = run_script("benchmark_ssl", *args, "--variants", "unet_mt,double_unet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((data / "dataset.json").read_text())["generator_version"] == PROFILES["smoke"].generator_version
    report = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"unet_mt-l1-u1-s0", "double_unet-l1-s0"}
    teacher = runs["unet_mt-l1-u1-s0"]
    assert teacher["config_files"] == ["train.json", "segmentation.json", "segmentation_mean_teacher.json"]
    assert teacher["unlabeled_views"] == 8 and teacher["generator_version"] == 2
    for result in runs.values():
        metrics = result["metrics"]
        # the lesion protocol from the label map's regions, and the pixel protocol beside it
        assert np.isfinite(metrics["test_ap50"]) and np.isfinite(metrics["test_mean_f1_per_class_matching"])
        for group in ("lesion", "malignant"):
            assert 0.0 <= metrics[f"test_pixel_{group}_dice"] <= 1.0
    markdown = (out / "results.md").read_text()
    assert "Pixel protocol" in markdown and "| Double U-Net (pixel-level) | 1 |" in markdown

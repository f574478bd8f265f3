"""The evidence study: pairing within a machine, intervals, data efficiency, the study's protocol and its report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from malignet_bundle.experiments.ssl_benchmark import (
    CONFIG_DIR,
    PROFILES,
    RunSpec,
    config_files,
    load_study_results,
    merge_results,
    run_directory,
    study_data_efficiency,
    study_result_path,
    with_steps,
    write_report,
)
from malignet_bundle.experiments.study_statistics import (
    Side,
    compare,
    crossing_fraction,
    data_efficiency,
    machine_slug,
    mean_interval,
    paired_differences,
)

from .conftest import run_script

MACHINE_A = "AMD EPYC 9B14, avx512 kernels, 2 cores, torch 2.14.1"
MACHINE_B = "Intel(R) Xeon(R) CPU @ 2.20GHz, avx512 kernels, 2 cores, torch 2.14.1"
# Student's t quantile t(0.975, 3), from a table, so the expected interval does not come from scipy
T_975_3 = 3.182446305284263


def result(variant, seed, machine, ap50, f1=None, labeled=1.0, per_class_f1=None, unlabeled=1.0):
    """A result.json as the benchmark writes it, with the few metrics the study reads."""
    unlabeled = 0.0 if variant in ("fpn", "fpn_global") else unlabeled
    run = RunSpec(variant, seed, labeled, unlabeled)
    metrics = {"test_ap50": ap50, "test_mean_f1": ap50 if f1 is None else f1}
    if per_class_f1 is not None:  # a result written after the matching option: both rules recorded
        metrics["test_mean_f1_class_agnostic_matching"] = metrics["test_mean_f1"]
        metrics["test_mean_f1_per_class_matching"] = per_class_f1
    return {
        "run": {**vars(run)},
        "name": run.name,
        "profile": "smoke",
        "steps": 2,
        "generator_version": PROFILES["smoke"].generator_version,
        "labeled_views": round(8 * labeled),
        "unlabeled_views": 8 if unlabeled else 0,
        "train_seconds": 30.0,
        "trained_on": machine,
        "matching": "class_agnostic",
        "metrics": metrics,
    }


def two_machines():
    """Machine A: both rows on seeds 0 and 1. Machine B: MaligNet on seed 1 and Mask R-CNN on seed 0 only."""
    return [
        result("fpn", 0, MACHINE_A, 0.30),
        result("fpn", 1, MACHINE_A, 0.20),
        result("malignet", 0, MACHINE_A, 0.40),
        result("malignet", 1, MACHINE_A, 0.25),
        result("fpn", 0, MACHINE_B, 0.10),
        result("malignet", 1, MACHINE_B, 0.90),
    ]


MALIGNET, FPN = Side("malignet"), Side("fpn", unlabeled_fraction=0.0)


def test_runs_of_different_machines_are_never_paired():
    pairs = paired_differences(two_machines(), MALIGNET, FPN, "test_ap50")
    # B's MaligNet seed 1 has A's Mask R-CNN seed 1 beside it, but not on its own machine: no pair
    assert [(p.machine, p.seed) for p in pairs] == [(MACHINE_A, 0), (MACHINE_A, 1)]
    assert [p.difference for p in pairs] == pytest.approx([0.10, 0.05])
    completed = [*two_machines(), result("fpn", 1, MACHINE_B, 0.50)]
    comparison = compare(completed, "MaligNet vs Mask R-CNN", MALIGNET, FPN, "test_ap50")
    assert comparison.n == 3 and comparison.machines == {MACHINE_A: 2, MACHINE_B: 1}
    assert comparison.mean == pytest.approx((0.10 + 0.05 + 0.40) / 3) and comparison.signs == (3, 0, 0)
    # results of another step budget or profile are other experiments: never paired either
    other_budget = {**result("fpn", 0, MACHINE_A, 0.3), "steps": 1600}
    assert paired_differences([other_budget, result("malignet", 0, MACHINE_A, 0.4)], MALIGNET, FPN, "test_ap50") == []
    with pytest.raises(ValueError, match="two results"):
        paired_differences([*two_machines(), result("fpn", 0, MACHINE_A, 0.3)], MALIGNET, FPN, "test_ap50")


def test_metric_names_fall_back_to_the_older_one():
    new = result("malignet", 0, MACHINE_A, 0.4, f1=0.5, per_class_f1=0.6)
    old = result("fpn", 0, MACHINE_A, 0.3, f1=0.2)  # before the option: class-agnostic under the plain name
    names = ("test_mean_f1_class_agnostic_matching", "test_mean_f1")
    (pair,) = paired_differences([new, old], MALIGNET, FPN, names)
    assert (pair.value, pair.reference) == (0.5, 0.2)
    assert paired_differences([new, old], MALIGNET, FPN, "test_mean_f1_per_class_matching") == []  # nan: no pair


def test_t_interval_on_known_data():
    low, high = mean_interval([1.0, 2.0, 3.0, 4.0], "t")
    half_width = T_975_3 * np.std([1, 2, 3, 4], ddof=1) / math.sqrt(4)
    assert (low, high) == pytest.approx((2.5 - half_width, 2.5 + half_width))
    assert (low, high) == pytest.approx((0.44574, 4.55426), abs=1e-5)
    assert all(math.isnan(x) for x in mean_interval([0.3], "t"))  # one pair: no interval
    assert mean_interval([0.25, 0.25, 0.25], "bootstrap") == (0.25, 0.25)  # no spread
    with pytest.raises(ValueError, match="interval method"):
        mean_interval([1.0, 2.0], "wilson")


def test_bootstrap_interval_is_deterministic_with_its_seed_and_holds_the_mean():
    differences = [0.12, -0.03, 0.08, 0.15, 0.01]
    first = mean_interval(differences, "bootstrap", seed=0)
    assert mean_interval(differences, "bootstrap", seed=0) == first
    assert first[0] < np.mean(differences) < first[1]
    # resampled means stay inside the data's range, and the percentile interval inside the t interval here
    assert min(differences) <= first[0] and first[1] <= max(differences)
    t_low, t_high = mean_interval(differences, "t")
    assert t_low < first[0] and first[1] < t_high


def test_established_only_when_the_interval_excludes_zero():
    def results_with(differences):
        found = []
        for seed, d in enumerate(differences):
            found += [result("fpn", seed, MACHINE_A, 0.3), result("malignet", seed, MACHINE_A, 0.3 + d)]
        return found

    ahead = compare(results_with([0.10, 0.12, 0.11]), "x", MALIGNET, FPN, "test_ap50")
    assert ahead.low > 0 and ahead.verdict == "established: higher"
    behind = compare(results_with([-0.10, -0.12, -0.11]), "x", MALIGNET, FPN, "test_ap50", method="bootstrap")
    assert behind.high < 0 and behind.verdict == "established: lower"
    mixed = compare(results_with([0.10, -0.10, 0.05]), "x", MALIGNET, FPN, "test_ap50")
    assert mixed.low < 0 < mixed.high and mixed.verdict == "not established" and mixed.signs == (2, 1, 0)
    single = compare(results_with([0.5]), "x", MALIGNET, FPN, "test_ap50")
    assert single.n == 1 and single.verdict == "not established"  # one pair establishes nothing


def test_crossing_fraction_interpolates_and_marks_what_it_cannot_bracket():
    assert crossing_fraction([0.25, 0.5, 1.0], [0.1, 0.3, 0.5], 0.4) == (0.75, "")
    assert crossing_fraction([0.25, 0.5, 1.0], [0.1, 0.3, 0.5], 0.3) == (0.5, "")
    assert crossing_fraction([0.25, 0.5, 1.0], [0.5, 0.3, 0.6], 0.4) == (0.25, "at_most")
    assert crossing_fraction([0.25, 0.5, 1.0], [0.1, 0.2, 0.3], 0.4) == (math.inf, "beyond")
    # not monotonic: the first crossing counts
    assert crossing_fraction([0.25, 0.5, 1.0], [0.1, 0.5, 0.2], 0.3) == pytest.approx((0.375, ""))
    with pytest.raises(ValueError, match="ascend"):
        crossing_fraction([0.5, 0.25], [0.1, 0.2], 0.1)


def test_data_efficiency_with_a_bootstrap_over_seeds():
    curves = {0: (0.2, 0.4, 0.6), 1: (0.3, 0.5, 0.7)}  # MaligNet at 25, 50, 100 % of the labels
    results = [result("fpn", seed, MACHINE_A, 0.45) for seed in curves]
    for seed, values in curves.items():
        results += [
            result("malignet", seed, MACHINE_A, v, labeled=f) for f, v in zip((0.25, 0.5, 1.0), values, strict=True)
        ]
    results.append(result("malignet", 2, MACHINE_A, 0.9, labeled=0.25))  # seed 2 is incomplete: left out
    curve = [Side("malignet", f) for f in (0.25, 0.5, 1.0)]
    found = data_efficiency(results, curve, FPN, "test_ap50", seed=0)
    # mean curve 0.25, 0.45, 0.65 reaches Mask R-CNN's 0.45 at 50 %: half the labels, factor 2
    assert found["units"] == 2 and found["curve"] == pytest.approx([0.25, 0.45, 0.65])
    assert found["fraction"] == pytest.approx(0.5) and found["factor"] == pytest.approx(2.0)
    # resampling the seeds: both seed 0 (crossing at 62.5 %) or both seed 1 (at 43.75 %) bound the interval
    assert (found["low"], found["high"]) == pytest.approx((0.4375, 0.625))
    assert found["factor_low"] == pytest.approx(1.6) and found["factor_high"] == pytest.approx(1 / 0.4375)
    assert data_efficiency(results, curve, FPN, "test_ap50", seed=0) == found
    never = data_efficiency(results, curve, FPN, "test_mean_f1_per_class_matching")
    assert never["units"] == 0 and math.isnan(never["fraction"])


def test_data_efficiency_of_a_row_trained_with_a_named_change(tmp_path):
    guarded = []
    for seed, values in {0: (0.3, 0.5), 1: (0.4, 0.4)}.items():
        for f, v in zip((0.5, 1.0), values, strict=True):
            entry = result("fpn_mt", seed, MACHINE_A, v, labeled=f)
            entry["run"]["variation"] = "mt_threshold0.9"
            guarded.append(entry)
        guarded.append(result("fpn", seed, MACHINE_A, 0.35))
        guarded.append(result("fpn_mt", seed, MACHINE_A, 0.1))  # the unchanged row, at 100 % only
    smoke = PROFILES["smoke"]  # labeled fractions 0.5 and 1.0
    (found,) = [e for e in study_data_efficiency(guarded, smoke) if e["metric_label"] == "AP50"]
    # the changed curve (mean 0.35 at 50 %, 0.45 at 100 %) reaches Mask R-CNN's 0.35 at half the labels
    assert (found["variant"], found["variation"], found["units"]) == ("fpn_mt", "mt_threshold0.9", 2)
    assert found["fraction"] == pytest.approx(0.5)
    markdown = write_report(guarded, smoke, tmp_path, "cmd")
    assert "| Mask R-CNN + mean teacher, teacher confidence threshold 0.9 (default 0.7) | AP50 | 2 (M1) |" in markdown


def test_the_study_protocol_of_the_cpu_profile(tmp_path):
    cpu = PROFILES["cpu"]
    assert cpu.iterations == 1600 and "cpu.json" in cpu.config_files  # the plateau, with cpu.json's speed
    files = config_files(RunSpec("malignet_mt", 0), cpu)
    assert [f.name for f in files] == ["train.json", "mean_teacher.json", "cpu.json"]
    assert files[-1] == CONFIG_DIR / "cpu.json" and files[-1].is_file()
    shorter = with_steps(cpu, 400)  # a quarter of the budget: self-training and the teacher's schedule follow
    assert (shorter.iterations, shorter.continuation_iterations) == (400, 200)
    assert shorter.mean_teacher["mean_teacher_burn_in"] == 200
    assert 1 / (1 - shorter.mean_teacher["ema_decay"]) == pytest.approx(200)
    with pytest.raises(ValueError, match="at least 1"):
        with_steps(cpu, 0)
    run = RunSpec("malignet_st", 2)
    assert run_directory(tmp_path, cpu, run) == tmp_path / "runs" / "steps1600" / "malignet_st-l1-u1-s2"
    kept = study_result_path(tmp_path, MACHINE_A, cpu, run)
    assert kept == tmp_path / machine_slug(MACHINE_A) / "cpu" / "steps1600" / "malignet_st-l1-u1-s2.json"
    assert machine_slug(MACHINE_A) != machine_slug(MACHINE_B) and machine_slug(MACHINE_A).startswith("amd-epyc")
    assert machine_slug(MACHINE_A) == machine_slug(MACHINE_A)


def _keep(results, results_dir, profile):
    for r in results:
        path = study_result_path(results_dir, r["trained_on"], profile, RunSpec(**r["run"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))


def test_kept_results_load_per_budget_and_bad_files_are_named(tmp_path):
    smoke = PROFILES["smoke"]
    _keep(two_machines(), tmp_path, smoke)
    loaded = load_study_results(tmp_path, smoke)
    assert len(loaded) == 6 and {r["trained_on"] for r in loaded} == {MACHINE_A, MACHINE_B}
    assert load_study_results(tmp_path, with_steps(smoke, 4)) == []  # another budget's folder
    assert len(merge_results(loaded[:2], loaded)) == 6  # a run kept twice counts once
    bad = tmp_path / "someone" / "smoke" / "steps2" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a readable result JSON"):
        load_study_results(tmp_path, smoke)


def test_report_rebuilt_from_kept_results_of_two_machines(tmp_path):
    results_dir, out = tmp_path / "study", tmp_path / "report"
    kept = [
        *(
            result(v, s, MACHINE_A, ap, f1=f1, per_class_f1=pc)
            for v, s, ap, f1, pc in (
                ("fpn", 0, 0.30, 0.20, 0.25),
                ("fpn", 1, 0.20, 0.30, 0.30),
                ("malignet", 0, 0.40, 0.35, 0.45),
                ("malignet", 1, 0.30, 0.25, 0.40),
            )
        ),
        result("fpn", 0, MACHINE_B, 0.10),  # written before the matching option
        result("malignet", 0, MACHINE_B, 0.25),
        result("malignet", 1, MACHINE_B, 0.90),  # no Mask R-CNN seed 1 on B: unpaired
    ]
    _keep(kept, results_dir, PROFILES["smoke"])
    args = ("--profile", "smoke", "--report_only", "--sweeps", "table4", "--variants", "fpn,malignet")
    done = run_script("benchmark_ssl", *args, "--results_dir", results_dir, "--output_dir", out)
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (out / "results.md").read_text()
    assert f"### Machine M1: {MACHINE_A} (4 runs)" in markdown and f"### Machine M2: {MACHINE_B} (3 runs)" in markdown
    assert "rows are compared in pairs of one machine only" in markdown
    evidence = markdown.split("### Evidence: paired differences")[1]
    headline = "| ResNet + LFPN w/ global features (MaligNet) vs ResNet + FPN (Mask R-CNN) |"
    rows = {line.split(" | ")[1]: line for line in evidence.splitlines() if line.startswith(headline)}
    # AP50: A's seeds +0.10, +0.10 and B's seed 0 +0.15; B's seed 1 is left out
    assert "| 3 (M1 2, M2 1) | 0.317 | 0.200 | +0.117 |" in rows["AP50"]
    assert rows["AP50"].endswith("| 3 / 0 / 0 | established: higher |")
    # per-class matching exists on machine A only: two pairs, +0.20 and +0.10
    assert "| 2 (M1 2) |" in rows["mean F1 at 0.7, per-class matching"]
    assert "| +0.150 |" in rows["mean F1 at 0.7, per-class matching"]
    # class-agnostic F1 pools the old results' plain name: +0.15, −0.05, +0.15
    assert "| 3 (M1 2, M2 1) |" in rows["mean F1 at 0.7, class-agnostic matching"]
    assert rows["mean F1 at 0.7, class-agnostic matching"].endswith("| 2 / 1 / 0 | not established |")
    machine_a = markdown.split("### Machine M1")[1].split("### Machine M2")[0]
    assert "| ResNet + LFPN w/ global features (MaligNet) | 2 | — | — | 0.300 ± 0.071 | — | — | 0.425 ± 0.035 |" in (
        machine_a
    )
    report = json.loads((out / "results.json").read_text())
    assert report["machines"] == {MACHINE_A: "M1", MACHINE_B: "M2"} and len(report["runs"]) == 7
    ap50 = next(c for c in report["comparisons"] if c["metric"] == "test_ap50" and c["variant"] == "malignet")
    assert ap50["mean"] == pytest.approx(0.35 / 3) and ap50["low"] > 0 and ap50["method"] == "t"
    # rebuilt again from the same files, the report is the same; with the bootstrap too (its seed is fixed)
    loaded = load_study_results(results_dir, PROFILES["smoke"])
    assert write_report(loaded, PROFILES["smoke"], out, report["command"]) == markdown
    boot = write_report(loaded, PROFILES["smoke"], out, "cmd", interval_method="bootstrap")
    assert "percentile bootstrap" in boot
    assert write_report(loaded, PROFILES["smoke"], out, "cmd", interval_method="bootstrap") == boot


def test_the_data_sweeps_are_compared_point_by_point(tmp_path):
    """Fig. 19: MaligNet against Mask R-CNN on the same share of the labels; Fig. 20: MaligNet with the
    unlabeled scans against itself without them and against Mask R-CNN; each with its interval, never across
    machines."""
    results = [
        *(result("fpn", s, MACHINE_A, ap, labeled=0.25) for s, ap in ((0, 0.20), (1, 0.10), (2, 0.30))),
        *(result("malignet", s, MACHINE_A, ap, labeled=0.25) for s, ap in ((0, 0.30), (1, 0.15), (2, 0.40))),
        result("malignet", 3, MACHINE_B, 0.90, labeled=0.25),  # no Mask R-CNN of seed 3 on B: unpaired
        *(result("malignet", s, MACHINE_A, ap, unlabeled=0.0) for s, ap in ((0, 0.20), (1, 0.30))),
        *(result("malignet", s, MACHINE_A, ap) for s, ap in ((0, 0.25), (1, 0.20))),
        *(result("fpn", s, MACHINE_A, ap) for s, ap in ((0, 0.25), (1, 0.10))),
    ]
    markdown = write_report(results, PROFILES["smoke"], tmp_path, "cmd")
    evidence = markdown.split("### Evidence: paired differences")[1].splitlines()
    malignet, fpn = "ResNet + LFPN w/ global features (MaligNet)", "ResNet + FPN (Mask R-CNN)"
    fig19 = next(line for line in evidence if line.startswith(f"| {malignet}, 25 % of the labels vs {fpn}, 25 % "))
    # AP50 +0.10, +0.05, +0.10: mean 0.083, sd 0.029, t(0.975, 2) = 4.303 -> half-width 0.072
    assert fig19.endswith(
        "| AP50 | 3 (M1 3) | 0.283 | 0.200 | +0.083 | [+0.012, +0.155] | 3 / 0 / 0 | established: higher |"
    )
    fig20 = next(
        line for line in evidence if line.startswith(f"| {malignet} vs {malignet}, 0 % of the unlabeled scans |")
    )
    assert "| AP50 | 2 (M1 2) | 0.225 | 0.250 | -0.025 |" in fig20 and fig20.endswith("| 1 / 1 / 0 | not established |")
    # Fig. 20's flat line: MaligNet without unlabeled scans against Mask R-CNN, AP50 -0.05 and +0.20
    flat = next(
        line for line in evidence if line.startswith(f"| {malignet}, 0 % of the unlabeled scans vs {fpn} | AP50 |")
    )
    assert "| 2 (M1 2) | 0.250 | 0.175 | +0.075 |" in flat and flat.endswith("| 1 / 1 / 0 | not established |")
    report = json.loads((tmp_path / "results.json").read_text())
    swept = [c for c in report["comparisons"] if c["labeled_fraction"] == 0.25 and c["metric"] == "test_ap50"]
    assert [(c["variant"], c["reference"], c["reference_labeled_fraction"], c["n"]) for c in swept] == [
        ("malignet", "fpn", 0.25, 3)
    ]

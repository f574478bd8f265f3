"""Learning curves: the plateau reading, and a smoke-profile curve that resumes, extends and refuses to mix."""

from __future__ import annotations

import json

import pytest

from malignet_bundle.experiments.learning_curve import plateau

from .conftest import run_script


def test_plateau_is_the_first_point_within_tolerance_of_everything_after_it():
    steps = [100, 200, 300, 400, 500]
    found = plateau(steps, [0.10, 0.30, 0.41, 0.42, 0.40], tolerance=0.02)
    assert found == {"step": 300, "value": 0.41, "best": 0.42, "still_rising": False}
    # a dip and a later rise: the plateau starts only where no later point is clearly better
    assert plateau(steps, [0.10, 0.40, 0.30, 0.45, 0.46])["step"] == 400


def test_a_curve_that_gains_at_its_last_point_is_still_rising():
    found = plateau([1, 2, 3], [0.1, 0.2, 0.5])
    assert found["still_rising"] and found["step"] == 3
    assert not plateau([1], [0.3])["still_rising"]
    with pytest.raises(ValueError):
        plateau([], [])


def test_smoke_curve_resumes_extends_and_stays_on_its_machine(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    # smoke profile: 8 labeled views, batch 2, so 4 steps an epoch; a point every 4 steps
    args = ("--profile", "smoke", "--variants", "fpn", "--every", 4, "--output_dir", out, "--dataset_dir", data)
    first = run_script("learning_curve", *args, "--steps", 8)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Epoch: 1/" in first.stdout + first.stderr  # MONAI's StatsHandler line of the first epoch
    curve_path = out / "curves" / "fpn-s0" / "curve.json"
    curve = json.loads(curve_path.read_text())
    assert [p["step"] for p in curve["points"]] == [4, 8]
    for point in curve["points"]:
        assert 0.0 <= point["ap50"] <= 1.0 and 0.0 <= point["operating_mean_f1"] <= 1.0
        assert 0.05 <= point["threshold"] <= 0.95
    assert curve["points"][1]["train_seconds"] > curve["points"][0]["train_seconds"] > 0
    # each point is the model at that step, evaluated on both splits
    for split in ("validation", "test"):
        assert (out / "curves" / "fpn-s0" / "evaluation" / "step000008" / split / "metrics.json").is_file()
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    # the demo's closing table reads the same metrics.json: both thresholds and the ranking figures
    metrics = out / "curves" / "fpn-s0" / "evaluation" / "step000008" / "test" / "metrics.json"
    table = run_script("summarize_evaluation", metrics, "--overlay", "some.png")
    assert table.returncode == 0, table.stderr[-2000:]
    point = curve["points"][1]
    assert f"at the operating threshold {point['threshold']:g}" in table.stdout
    assert f"| AP50 (any threshold) | {point['ap50']:.3f} |" in table.stdout and "some.png" in table.stdout
    missing = run_script("summarize_evaluation", tmp_path / "nowhere" / "metrics.json")
    assert missing.returncode != 0 and "no evaluation found" in missing.stderr
    assert "plateau from step" in (out / "learning_curves.md").read_text()

    # a later session extends the same curve: the first two points stay, training resumes at step 8
    longer = run_script("learning_curve", *args, "--steps", 12)
    assert longer.returncode == 0, longer.stderr[-3000:]
    extended = json.loads(curve_path.read_text())
    assert extended["points"][:2] == curve["points"] and extended["points"][2]["step"] == 12
    assert "Epoch: 1/" not in longer.stdout + longer.stderr  # resumed, not trained from the start

    # points from another machine are never mixed into this one's curve
    extended["trained_on"] = "another machine"
    curve_path.write_text(json.dumps(extended))
    refused = run_script("learning_curve", *args, "--steps", 16)
    assert refused.returncode != 0 and "only on its own machine" in refused.stderr

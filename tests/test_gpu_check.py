"""The GPU readiness check, run for real with its CPU profile: same parts, same configs, tiny network, gloo."""

from __future__ import annotations

import json
import math

import pytest

from malignet_bundle.atomic_io import TEMP_PREFIX
from malignet_bundle.experiments.gpu_check import MODELS, PROFILES

from .conftest import run_script

PROFILE = PROFILES["cpu"]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check")
    output = work / "result.json"
    result = run_script("gpu_check", "--work_dir", work, "--output", output, "--profile", "cpu")
    return work, output, result


def _all_finite(steps) -> bool:
    return all(math.isfinite(value) for step in steps for value in [step["loss"], *step["losses"].values()])


@pytest.mark.slow
def test_cpu_profile_runs_every_part_and_passes(check):
    work, output, result = check
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = json.loads(output.read_text())
    assert results["passed"] is True
    assert results["profile"]["name"] == "cpu"
    assert set(results["parts"]) == {"train_malignet", "train_maskrcnn", "latency", "ddp_malignet", "ddp_maskrcnn"}
    assert all(part["passed"] for part in results["parts"].values())
    env = results["environment"]
    assert {"device", "torch", "torchvision", "cuda", "monai", "ignite", "python"} <= set(env)
    # the table on stdout ends with the verdict; no temporary file of the atomic writes is left behind
    assert "all parts passed: True" in result.stdout
    assert not list(work.rglob(f"{TEMP_PREFIX}*"))


@pytest.mark.slow
def test_single_process_training_records_finite_losses_of_both_models(check):
    _, output, _ = check
    parts = json.loads(output.read_text())["parts"]
    for model in MODELS:
        part = parts[f"train_{model}"]
        assert part["returncode"] == 0
        assert part["steps"] == PROFILE.steps == len(part["step_records"])
        assert part["losses_finite"] and _all_finite(part["step_records"])
        assert part["amp"] is False and part["device"] == "cpu"
        assert part["peak_rss_mb"] > 0 and part["peak_memory_mb"] is None  # no GPU allocator here
        assert part["seconds_per_step"] is not None
        assert "val_mean_f1" in part["validation"]  # the epoch's validation ran too
    # the two configs train what they name: the ladder cost only in MaligNet
    assert "loss_ladder" in parts["train_malignet"]["loss_terms"]
    assert "loss_ladder" not in parts["train_maskrcnn"]["loss_terms"]
    assert "loss_mask" in parts["train_maskrcnn"]["loss_terms"]
    assert parts["train_maskrcnn"]["configs"] == ["train.json", "baseline.json"]


@pytest.mark.slow
def test_torchrun_part_exits_0_with_finite_losses_on_both_ranks(check):
    _, output, _ = check
    parts = json.loads(output.read_text())["parts"]
    for model in MODELS:
        part = parts[f"ddp_{model}"]
        assert part["returncode"] == 0, part.get("log_tail")
        assert part["backend"] == "gloo" and part["world_size"] == 2
        assert "torch.distributed.run" in part["command"] and "multi_gpu_train.json" in part["configs"]
        assert [r["rank"] for r in part["ranks"]] == [0, 1]
        for rank in part["ranks"]:
            assert rank["losses_finite"] and rank["steps"] == PROFILE.ddp_steps


@pytest.mark.slow
def test_latency_of_both_models_at_every_batch_size(check):
    _, output, _ = check
    latency = json.loads(output.read_text())["parts"]["latency"]
    assert set(latency["models"]) == set(MODELS)
    for entry in latency["models"].values():
        timings = entry["timings"]
        assert {t["batch"] for t in timings} == set(PROFILE.latency_batches)
        assert {t["precision"] for t in timings} == {"fp32"}  # AMP only on a GPU
        assert all(t["repeats"] == PROFILE.latency_repeats and math.isfinite(t["median_seconds"]) for t in timings)
        # the worst case at score 0 keeps detections, so the mask head is in what was timed
        assert any(t["score_thresh"] == 0.0 and t["detections_per_image"] > 0 for t in timings)

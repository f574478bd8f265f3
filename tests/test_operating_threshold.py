"""The operating threshold: chosen in validation, stored beside model.pt, used by evaluation unless overridden."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from ignite.engine import Engine, Events

from malignet_bundle.atomic_io import sha256_file
from malignet_bundle.engines.operating_point import (
    OperatingPointSaver,
    ScoreFloorInferer,
    copy_model,
    read_operating_point,
    resolve_operating_point,
    sidecar_path,
    write_operating_point,
)
from malignet_bundle.metrics.evaluation import SCORE_THRESHOLDS
from malignet_bundle.metrics.operating_point import OperatingPointF1, choose_operating_threshold
from malignet_bundle.networks.malignet import MaligNet

from .test_bundle_training import _train, tiny  # noqa: F401 - the tiny dataset fixture, shared


def _choice(threshold: float):
    """A validation choice whose best point is ``threshold`` (mean F1 0.5 there, 0.2 at 0.7)."""
    curve = [0.5 if t == threshold else (0.2 if t == 0.7 else 0.1) for t in SCORE_THRESHOLDS]
    return choose_operating_threshold(SCORE_THRESHOLDS, curve)


def _model(folder, seed: int = 0):
    """A small state dict as ``model.pt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(3, 2).state_dict(), folder / "model.pt")
    return folder / "model.pt"


# --- storing and reading ---------------------------------------------------------------------------------------------


def test_the_sidecar_describes_its_model_and_is_read_back(tmp_path):
    model = _model(tmp_path / "run")
    path = write_operating_point(model, _choice(0.35), epoch=7)
    assert path == tmp_path / "run" / "model.json" == sidecar_path(model)
    record = json.loads(path.read_text())
    assert record["operating_threshold"] == 0.35 and record["epoch"] == 7 and record["chosen_on"] == "validation"
    assert record["val_mean_f1_at_threshold"] == 0.5 and record["val_mean_f1_at_0.7"] == 0.2
    assert record["thresholds"] == list(SCORE_THRESHOLDS) and len(record["val_mean_f1_curve"]) == 19
    assert record["model_sha256"] == sha256_file(model)
    point = resolve_operating_point(model)
    assert (point.threshold, point.origin) == (0.35, "validation")
    assert str(path) in point.source and "epoch 7" in point.source
    assert point.as_dict() == {"threshold": 0.35, "origin": "validation", "source": point.source}


def test_an_explicit_threshold_overrides_the_stored_one(tmp_path):
    model = _model(tmp_path)
    write_operating_point(model, _choice(0.35), epoch=1)
    for given in (0.9, "0.9"):  # the command line may hand over text
        point = resolve_operating_point(model, given)
        assert (point.threshold, point.origin) == (0.9, "override") and "--score_threshold 0.9" in point.source
    assert resolve_operating_point(model, 0.0).threshold == 0.0  # 0 is a threshold, not "none given"
    for bad in (1.5, -0.1, float("nan"), "high"):
        with pytest.raises(ValueError, match="--score_threshold"):
            resolve_operating_point(model, bad)


def test_without_a_usable_sidecar_the_default_is_used_and_said(tmp_path, caplog):
    model = _model(tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="malignet_bundle.engines.operating_point"):
        point = resolve_operating_point(model)
    assert (point.threshold, point.origin) == (0.7, "default") and "no model.json beside model.pt" in point.source
    assert "no model.json beside" in caplog.text and "0.7" in caplog.text
    # a sidecar written for other weights (e.g. a kill between the model's write and its sidecar's)
    write_operating_point(model, _choice(0.35), epoch=1)
    _model(tmp_path / "old", seed=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="malignet_bundle.engines.operating_point"):
        point = resolve_operating_point(model)
    assert (point.threshold, point.origin) == (0.7, "default") and "describes another model.pt" in point.source
    assert "SHA-256 differs" in caplog.text
    # a hand-written sidecar holds just the threshold
    sidecar_path(model).write_text('{"operating_threshold": 0.45}')
    assert resolve_operating_point(model).threshold == 0.45


def test_a_broken_sidecar_is_named_not_guessed(tmp_path):
    model = _model(tmp_path)
    for content, reason in (
        ("{not json", "not a readable operating-point file"),
        ('{"threshold": 0.5}', "no 'operating_threshold'"),
        ('{"operating_threshold": 7}', "not a confidence between 0 and 1"),
        ('{"operating_threshold": "low"}', "is not a number"),
    ):
        sidecar_path(model).write_text(content)
        with pytest.raises(ValueError, match=reason) as raised:
            resolve_operating_point(model)
        assert str(sidecar_path(model)) in str(raised.value)
        assert resolve_operating_point(model, 0.5).threshold == 0.5  # an override needs no sidecar


def test_copying_a_model_takes_its_sidecar_along(tmp_path):
    trained = _model(tmp_path / "trained")
    write_operating_point(trained, _choice(0.35), epoch=2)
    served = copy_model(trained, tmp_path / "served" / "model.pt")
    assert served.read_bytes() == trained.read_bytes()
    assert resolve_operating_point(served).threshold == 0.35  # its SHA-256 still holds
    # a model without a sidecar replacing one with: the stale sidecar goes
    bare = _model(tmp_path / "bare", seed=3)
    copy_model(bare, served)
    assert read_operating_point(served) is None and resolve_operating_point(served).origin == "default"


# --- choosing in validation ------------------------------------------------------------------------------------------


def test_the_validation_inferer_returns_detections_below_the_networks_threshold():
    torch.manual_seed(0)
    network = MaligNet(image_size=96, backbone="resnet18", pyramid_channels=64, representation_size=256).eval()
    assert network.roi_heads.score_thresh == 0.7
    images = [torch.rand(1, 96, 96)]
    with torch.no_grad():
        plain = network(images)[0]["scores"]
        floored = ScoreFloorInferer(0.05)(images, network)[0]["scores"]
    assert (plain >= 0.7).all()
    assert len(floored) > len(plain) and (floored >= 0.05).all() and (floored < 0.7).any()
    assert network.roi_heads.score_thresh == 0.7  # restored: other users of the network are untouched
    with pytest.raises(ValueError, match="score_floor"):
        ScoreFloorInferer(2.0)


def _mask(x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros((16, 16), dtype=torch.uint8)
    m[0:4, x0:x1] = 1
    return m


def test_the_saver_writes_the_sidecar_after_each_new_best_model_and_only_then(tmp_path):
    """Best validation F1 per epoch 2/3, 0 (worse), 1 (better), 1 (equal): model.pt and model.json at 1 and 3."""
    hit, miss = _mask(0, 4), _mask(8, 12)
    target = {"masks": torch.stack([hit, _mask(12, 16)]), "labels": torch.tensor([1, 1])}

    def detections(scores: list[float], masks: list[torch.Tensor]) -> dict:
        labels = torch.ones(len(masks), dtype=torch.long)
        return {"masks": torch.stack(masks).float()[:, None], "labels": labels, "scores": torch.tensor(scores)}

    per_epoch = [
        detections([0.9], [hit]),  # P 1, S 1/2: F1 2/3 up to 0.9, the nearest 0.7 being 0.7 itself
        detections([0.9], [miss]),  # F1 0: not saved
        detections([0.9, 0.3], [hit, _mask(12, 16)]),  # both found, the second at 0.3: F1 1 up to 0.3
        detections([0.9, 0.3], [hit, _mask(12, 16)]),  # as good, not better: not saved
    ]
    weights = torch.nn.Linear(1, 1)

    def step(engine: Engine, _: int) -> tuple:
        with torch.no_grad():
            weights.weight.fill_(engine.state.epoch)  # each epoch's model is another file
        return [per_epoch[engine.state.epoch - 1]], [target]

    engine = Engine(step)
    metric = OperatingPointF1(num_classes=4)
    metric.attach(engine, "val_operating_mean_f1")
    saver = OperatingPointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": weights},
        save_key_metric=True,
        key_metric_name="val_operating_mean_f1",
        key_metric_filename="model.pt",
        operating_metric=metric,
    )
    saver.attach(engine)
    seen = []

    @engine.on(Events.EPOCH_COMPLETED)
    def _record(engine: Engine) -> None:
        record = json.loads((tmp_path / "model.json").read_text())
        state = torch.load(tmp_path / "model.pt", weights_only=True)
        assert record["model_sha256"] == sha256_file(tmp_path / "model.pt")  # the pair agrees after every epoch
        seen.append((record["epoch"], record["operating_threshold"], float(state["weight"])))

    engine.run([0], max_epochs=4)
    assert seen == [(1, 0.7, 1.0), (1, 0.7, 1.0), (3, 0.3, 3.0), (3, 0.3, 3.0)]
    assert json.loads((tmp_path / "model.json").read_text())["val_mean_f1_at_threshold"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]  # no temporary files left
    with pytest.raises(ValueError, match="save_key_metric"):
        OperatingPointSaver(save_dir=str(tmp_path), save_dict={"model": weights}, operating_metric=metric)


# --- through the bundle ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny):  # noqa: F811 - the imported fixture
    """A 1-epoch MaligNet trained by train.json on the tiny dataset; the completed process."""
    result = _train(tiny, "operating", "train.json")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_training_stores_the_validation_threshold_beside_model_pt(tiny, trained):  # noqa: F811
    log = trained.stdout + trained.stderr
    assert "val_operating_mean_f1" in log and "val_operating_threshold" in log and "val_mean_f1" in log
    model = tiny / "operating" / "model.pt"
    MaligNet(image_size=96).load_state_dict(torch.load(model, weights_only=True))  # still a plain state dict
    record = json.loads((tiny / "operating" / "model.json").read_text())
    assert record["operating_threshold"] in SCORE_THRESHOLDS and record["epoch"] == 1
    assert record["model_sha256"] == sha256_file(model)
    assert record["val_mean_f1_curve"][record["thresholds"].index(0.7)] == record["val_mean_f1_at_0.7"]
    assert record["val_mean_f1_at_threshold"] == max(record["val_mean_f1_curve"])
    assert f"{tiny / 'operating' / 'model.json'}: operating threshold" in log


def _evaluate(tiny, ckpt: str, out: str, *extra: str):  # noqa: F811
    extra = ("--output_dir", str(tiny / out), *extra)
    result = _train(tiny, ckpt, "train.json", "evaluate.json", extra=extra, run_id="evaluating")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = tiny / out / "evaluation"
    return json.loads((report / "metrics.json").read_text()), (report / "metrics.md").read_text(), result


def test_evaluation_uses_the_stored_threshold_unless_told_and_reports_0_7_beside(tiny, trained):  # noqa: F811
    """Tables 4–7 at the stored threshold (or --score_threshold, or 0.7 without one) and always at 0.7."""
    for name in ("stored", "bare"):
        (tiny / name).mkdir()
        shutil.copyfile(tiny / "operating" / "model.pt", tiny / name / "model.pt")
    write_operating_point(tiny / "stored" / "model.pt", _choice(0.35), epoch=4)

    stored, markdown, _ = _evaluate(tiny, "stored", "eval_stored")
    operating = stored["thresholds"]["operating"]
    assert (operating["threshold"], operating["origin"]) == (0.35, "validation")
    assert str(tiny / "stored" / "model.json") in operating["source"] and "epoch 4" in operating["source"]
    assert stored["thresholds"]["protocol"]["threshold"] == 0.7
    assert stored["metrics"]["test_operating_threshold"] == 0.35
    assert {"test_mean_f1", "test_operating_mean_f1", "test_operating_metastasis_patient_f1"} <= set(stored["metrics"])
    assert "Lesion instance segmentation (Table 4) at the operating threshold 0.35" in markdown
    assert "Lesion instance segmentation (Table 4) at the protocol threshold 0.7" in markdown
    assert "Operating threshold 0.35: " + str(tiny / "stored" / "model.json") in markdown

    told, _, _ = _evaluate(tiny, "stored", "eval_told", "--score_threshold", "0.05")
    operating = told["thresholds"]["operating"]
    assert (operating["threshold"], operating["origin"]) == (0.05, "override")
    bare, markdown, result = _evaluate(tiny, "bare", "eval_bare")
    assert "no model.json beside" in result.stderr + result.stdout
    operating = bare["thresholds"]["operating"]
    assert (operating["threshold"], operating["origin"]) == (0.7, "default")
    assert bare["detail"]["operating_point"]["segmentation"] == bare["detail"]["segmentation"]
    assert "Operating threshold 0.7: default 0.7: no model.json beside model.pt" in markdown

    # the protocol figures do not move with the operating threshold; those at the operating threshold do
    protocol = {k: v for k, v in stored["metrics"].items() if "operating" not in k}
    for other in (told, bare):
        assert {k: v for k, v in other["metrics"].items() if "operating" not in k} == pytest.approx(
            protocol, nan_ok=True
        )
    predicted = {
        name: sum(v["predicted"] for v in run["detail"]["operating_point"]["segmentation"]["per_class"].values())
        for name, run in (("0.05", told), ("0.35", stored), ("0.7", bare))
    }
    assert predicted["0.05"] >= predicted["0.35"] >= predicted["0.7"] and predicted["0.05"] > 0

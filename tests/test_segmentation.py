"""Semantic-segmentation baselines: label maps, label map → lesions, the pixel protocol, networks, training."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export
from monai.networks.nets import BasicUNet

from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.metrics.label_instances import label_map_to_instances, semantic_detections
from malignet_bundle.metrics.pixel import (
    SemanticPixelMetrics,
    label_map_confusion,
    prediction_label_map,
    semantic_pixel_scores,
    target_label_map,
)
from malignet_bundle.networks.double_unet import DoubleUNet
from malignet_bundle.networks.segmentation import SemanticSegmenter
from malignet_bundle.outputs.dicom_seg import read_dicom_seg_masks
from malignet_bundle.semi_supervised.segmentation_mean_teacher import SegmentationMeanTeacher, sigmoid_ramp_up
from malignet_bundle.transforms.label_maps import InstanceLabelMapd, instance_label_map, prepare_segmentation_batch

from .conftest import ROOT, bundle_command

# hand-made 4 × 4 maps (classes 1 malignant, 2 other): worked out in test_pixel_protocol_exact_numbers
GROUND_TRUTH = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
PREDICTED = torch.tensor([[1, 0, 0, 0], [1, 1, 2, 0], [0, 0, 2, 0], [0, 0, 0, 1]])


def test_instance_label_map_paints_classes_and_the_first_listed_lesion_wins():
    masks = torch.zeros((2, 4, 4))
    masks[0, 0:2, 0:2] = 1
    masks[1, 1:3, 1:3] = 1
    label_map = instance_label_map(masks, torch.tensor([2, 1]))
    expected = torch.tensor([[2, 2, 0, 0], [2, 2, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(label_map, expected)
    item = {"masks": masks, "labels": torch.tensor([2, 1])}
    out = InstanceLabelMapd("masks")(item)
    assert out["label_map"].shape == (1, 4, 4) and torch.equal(out["label_map"][0], expected)
    assert "label_map" not in item  # the input item is left as it was
    empty = instance_label_map(torch.zeros((0, 3, 5)), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (3, 5) and not empty.any()
    with pytest.raises(ValueError, match="2 instance masks but 1 labels"):
        instance_label_map(masks, torch.tensor([1]))
    with pytest.raises(ValueError, match="start at 1"):
        instance_label_map(masks, torch.tensor([0, 1]))


def test_prepare_segmentation_batch_carries_the_label_map_beside_the_instances():
    masks = torch.zeros((1, 8, 8))
    masks[0, 2:5, 2:5] = 1
    item = InstanceLabelMapd("masks")({"image": torch.rand(1, 8, 8), "masks": masks, "labels": torch.tensor([3])})
    item["boxes"] = torch.tensor([[2.0, 2.0, 5.0, 5.0]])
    images, targets = prepare_segmentation_batch([item])
    assert len(images) == 1 and targets[0]["label_map"].dtype == torch.int64
    assert int(targets[0]["label_map"].sum()) == 9 * 3 and targets[0]["masks"].shape == (1, 8, 8)
    images, targets = prepare_segmentation_batch([{"image": torch.rand(1, 8, 8)}])  # unlabeled crop
    assert targets is None


def test_label_map_regions_become_lesions_scored_by_their_mean_foreground_probability():
    label_map = torch.zeros((6, 6), dtype=torch.long)
    label_map[0:2, 0:2] = 1  # region A, 4 pixels
    label_map[2, 2] = 1  # touches A at a corner: 8-connected, so part of A
    label_map[5, 5] = 1  # region B, 1 pixel
    label_map[0:2, 4:6] = 2  # region C, class 2
    foreground = torch.full((6, 6), 0.1)
    foreground[0:2, 0:2] = 0.5
    foreground[2, 2] = 1.0
    foreground[5, 5] = 0.25
    foreground[0:2, 4:6] = 0.75
    probabilities = torch.stack((1 - foreground, foreground / 2, foreground / 2))
    lesions = label_map_to_instances(label_map, probabilities)
    assert lesions["labels"].tolist() == [2, 1, 1]  # by descending score
    assert lesions["scores"].tolist() == pytest.approx([0.75, 3.0 / 5, 0.25])
    assert lesions["boxes"].tolist() == [[4, 0, 6, 2], [0, 0, 3, 3], [5, 5, 6, 6]]
    assert lesions["masks"].shape == (3, 1, 6, 6)
    assert lesions["masks"].sum((1, 2, 3)).tolist() == [4, 5, 1]
    assert bool(lesions["masks"][1, 0, 2, 2]) and not lesions["masks"][1, 0, 5, 5]
    # the score floor, the smallest region and the cap each leave lesions out
    assert label_map_to_instances(label_map, probabilities, score_floor=0.5)["labels"].tolist() == [2, 1]
    assert label_map_to_instances(label_map, probabilities, min_pixels=2)["scores"].tolist() == pytest.approx(
        [0.75, 0.6]
    )
    assert label_map_to_instances(label_map, probabilities, max_lesions=1)["labels"].tolist() == [2]
    none = label_map_to_instances(torch.zeros((6, 6), dtype=torch.long), probabilities)
    assert none["masks"].shape == (0, 1, 6, 6) and none["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="values must be in 0..2"):
        label_map_to_instances(label_map + 2, probabilities)


def test_semantic_detections_are_the_argmax_regions_and_feed_the_lesion_metrics():
    from malignet_bundle.metrics.evaluation import evaluate_lesions

    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 0] = 5.0
    for value, channel in ((1, 1), (2, 2)):
        logits[0, channel][GROUND_TRUTH == value] = 10.0
        logits[0, 0][GROUND_TRUTH == value] = 0.0
    (detection,) = semantic_detections(logits)
    assert torch.equal(detection["label_map"], GROUND_TRUTH)
    assert detection["labels"].tolist() == [1, 2] and (detection["scores"] > 0.99).all()
    masks = torch.stack([(GROUND_TRUTH == 1), (GROUND_TRUTH == 2)]).to(torch.uint8)
    target = {"masks": masks, "labels": torch.tensor([1, 2])}
    result = evaluate_lesions([detection], [target], num_classes=2, score_threshold=0.7)
    assert result.scalars["mean_f1"] == 1.0 and result.scalars["pixel_dice"] == 1.0


def test_pixel_protocol_exact_numbers():
    confusion = label_map_confusion(PREDICTED, GROUND_TRUTH, num_classes=2)
    # rows ground truth, columns prediction
    assert confusion.tolist() == [[8, 1, 1], [1, 3, 0], [1, 0, 1]]
    scores = semantic_pixel_scores(confusion, malignant_label=1)
    assert scores["per_class"][1] == {"dice": 0.75, "precision": 0.75, "sensitivity": 0.75, "support": 4}
    assert scores["per_class"][2] == {"dice": 0.5, "precision": 0.5, "sensitivity": 0.5, "support": 2}
    # any lesion against background: 4 of the 6 predicted lesion pixels are on a lesion (of either class)
    assert scores["lesion"] == {"dice": pytest.approx(8 / 12), "precision": 4 / 6, "sensitivity": 4 / 6, "support": 6}
    assert scores["malignant"] == scores["per_class"][1]
    with pytest.raises(ValueError, match="values must be in 0..2"):
        label_map_confusion(PREDICTED + 1, GROUND_TRUTH, num_classes=2)
    with pytest.raises(ValueError, match="not a lesion class"):
        semantic_pixel_scores(confusion, malignant_label=3)


def test_semantic_pixel_metric_reads_label_maps_and_paints_detector_lesions_at_its_threshold():
    masks = torch.stack([(GROUND_TRUTH == 1), (GROUND_TRUTH == 2)]).to(torch.uint8)
    target = {"masks": masks, "labels": torch.tensor([1, 2])}
    assert torch.equal(target_label_map(target), GROUND_TRUTH)
    semantic = {"label_map": PREDICTED}
    # a detector: the malignant lesion right, a class-2 lesion below the threshold that is not painted
    detector = {"masks": masks[:, None].float(), "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.3])}
    painted = prediction_label_map(detector, (4, 4), score_threshold=0.5)
    assert torch.equal(painted, torch.where(GROUND_TRUTH == 1, 1, 0))
    metric = SemanticPixelMetrics(num_classes=2, malignant_label=1, prefix="test_", score_threshold=0.5)
    metric.update(([semantic, detector], [target, target]))
    scalars = metric.compute()
    # malignant over both images: tp 3 + 4, fp 1 + 0, fn 1 + 0
    assert scalars["test_pixel_malignant_precision"] == pytest.approx(7 / 8)
    assert scalars["test_pixel_malignant_dice"] == pytest.approx(14 / 16)
    # class 2: tp 1 + 0, fp 1 + 0, fn 1 + 2
    assert scalars["test_pixel_class_2_sensitivity"] == pytest.approx(1 / 4)
    assert metric.last_result["images"] == 2
    assert set(scalars) == {
        f"test_pixel_{g}_{s}"
        for g in ("lesion", "malignant", "class_1", "class_2")
        for s in ("dice", "precision", "sensitivity")
    }


def test_double_unet_output_shapes_and_its_width_check():
    network = DoubleUNet(out_channels=5, features=(8, 16, 32, 64))
    images = torch.rand(2, 1, 48, 40)
    network.train()
    both = network(images)
    assert both.shape == (2, 2, 5, 48, 40)  # final head first, then the first U-Net's
    network.eval()
    with torch.no_grad():
        final = network(images)
    assert final.shape == (2, 5, 48, 40)
    assert not DoubleUNet(out_channels=3, features=(8, 16), deep_supervision=False).train()(images).dim() == 5
    with pytest.raises(ValueError, match="divisible by 4"):
        DoubleUNet(features=(8, 16, 30))


@pytest.mark.parametrize("double", [False, True], ids=["basic_unet", "double_unet"])
def test_segmenter_trains_on_label_maps_and_predicts_lesions(double):
    torch.manual_seed(0)
    if double:
        dense = DoubleUNet(out_channels=3, features=(8, 16, 32))
    else:
        dense = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8))
    segmenter = SemanticSegmenter(dense, num_classes=3)
    images = [torch.rand(1, 32, 32) for _ in range(2)]
    masks = torch.zeros((1, 32, 32))
    masks[0, 8:16, 8:16] = 1
    targets = [{"label_map": instance_label_map(masks, torch.tensor([1]))[None]}, {"masks": masks, "labels": [2]}]
    soft = {"probabilities": torch.full((3, 32, 32), 1 / 3)}
    segmenter.train()
    losses = segmenter(images, targets, unlabeled=[torch.rand(1, 32, 32)], pseudo=([images[0]], [soft]))
    assert set(losses) == {"loss_segmentation", "loss_segmentation_pseudo"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in segmenter.parameters() if p.requires_grad)
    segmenter.eval()
    with torch.no_grad():
        detections = segmenter(images)
    assert len(detections) == 2 and detections[0]["label_map"].shape == (32, 32)
    assert (
        len(detections[0]["labels"]) <= 100 and ((detections[0]["scores"] >= 0) & (detections[0]["scores"] <= 1)).all()
    )
    with pytest.raises(ValueError, match="returns 3 channels, but num_classes is 5"):
        SemanticSegmenter(dense, num_classes=5).train()(images, targets)
    with pytest.raises(ValueError, match="probabilities"):
        segmenter.train()(images, targets, pseudo=([images[0]], [{"label_map": targets[0]["label_map"]}]))


def test_mean_teacher_ramp_up_and_ema_schedule():
    assert sigmoid_ramp_up(0, 100) == pytest.approx(np.exp(-5.0))
    assert sigmoid_ramp_up(50, 100) == pytest.approx(np.exp(-5.0 * 0.25))
    assert sigmoid_ramp_up(100, 100) == 1.0 and sigmoid_ramp_up(500, 100) == 1.0 and sigmoid_ramp_up(3, 0) == 1.0
    segmenter = SemanticSegmenter(BasicUNet(spatial_dims=2, out_channels=3, features=(4, 4, 8, 8, 16, 4)), 3)
    method = SegmentationMeanTeacher(segmenter, decay=0.99, consistency_weight=0.5, ramp_up=10)
    assert method.weight(10) == 0.5 and method.weight(5) == pytest.approx(0.5 * np.exp(-1.25))
    assert method.momentum(1) == 0.5 and method.momentum(1000) == pytest.approx(0.01)
    assert method.teacher is not segmenter and not any(p.requires_grad for p in method.teacher.parameters())
    with pytest.raises(ValueError, match="needs a SemanticSegmenter"):
        SegmentationMeanTeacher(BasicUNet(spatial_dims=2))
    with pytest.raises(ValueError, match="decay"):
        SegmentationMeanTeacher(segmenter, decay=1.0)


# ---- end to end through the bundle runner, on tiny synthetic data --------------------------------------------

TINY_UNET = ("--segmentation_features", "[8,8,16,32,64,8]")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, class_map):
    from malignet_bundle.data.synthesize import write_dataset
    from malignet_bundle.engines.chest_detector import train_chest_detector

    root = tmp_path_factory.mktemp("tiny_segmentation")
    write_dataset(root / "data", labeled=2, unlabeled=2, validation=1, test=1, seed=21, progress=False)
    datalist = load_datalist(root / "data" / "datalist.json")
    train_chest_detector(datalist, root / "data", class_map, root / "chest.pt", epochs=1, batch_size=4, progress=False)
    return root


def _run(tiny, name: str, *configs: str, extra: tuple = (), run_id: str = "training") -> subprocess.CompletedProcess:
    command = bundle_command(tiny, name, *configs, extra=extra, run_id=run_id)
    return subprocess.run(command, capture_output=True, text=True, cwd=tiny, timeout=900)


def _unet(class_map) -> SemanticSegmenter:
    features = json.loads(TINY_UNET[1])
    dense = BasicUNet(spatial_dims=2, in_channels=1, out_channels=class_map.num_classes + 1, features=features)
    return SemanticSegmenter(dense, class_map.num_classes + 1)


def test_segmentation_json_trains_a_unet_through_the_bundle_runner(tiny, class_map):
    result = _run(tiny, "unet", "train.json", "segmentation.json", extra=TINY_UNET)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "loss_segmentation" in log and "loss_ladder" not in log
    assert "val_operating_mean_f1" in log and "val_pixel_malignant_dice" in log
    model = torch.load(tiny / "unet" / "model.pt", weights_only=True)
    _unet(class_map).load_state_dict(model)
    assert (tiny / "unet" / "model.json").is_file()  # the operating threshold of a semantic model


def test_segmentation_mean_teacher_json_trains_the_teacher_and_serves_it(tiny, class_map):
    extra = (*TINY_UNET, "--consistency_ramp_up", "1", "--consistency_weight", "10.0")
    result = _run(tiny, "unet_mt", "train.json", "segmentation.json", "segmentation_mean_teacher.json", extra=extra)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "loss_consistency" in log and "consistency_mse" in log
    latest = torch.load(tiny / "unet_mt" / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "student", "optimizer", "trainer"} <= set(latest)
    model = torch.load(tiny / "unet_mt" / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], latest["model"][k]) for k in model)  # model.pt is the teacher
    assert any(not torch.equal(latest["model"][k], latest["student"][k]) for k in model)
    _unet(class_map).load_state_dict(model)


def test_double_unet_json_trains_through_the_bundle_runner(tiny, class_map):
    extra = ("--segmentation_features", "[8,16,32]")
    result = _run(tiny, "double_unet", "train.json", "segmentation.json", "double_unet.json", extra=extra)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    model = torch.load(tiny / "double_unet" / "model.pt", weights_only=True)
    classes = class_map.num_classes + 1
    SemanticSegmenter(DoubleUNet(out_channels=classes, features=(8, 16, 32)), classes).load_state_dict(model)


def test_segmentation_evaluate_json_writes_both_protocols(tiny, class_map):
    """evaluate.json + segmentation_evaluate.json on a semantic model: lesion tables and the pixel protocol."""
    (tiny / "evaluate_unet").mkdir()
    torch.manual_seed(0)
    torch.save(_unet(class_map).state_dict(), tiny / "evaluate_unet" / "model.pt")
    out = tiny / "evaluate_unet_out"
    configs = ("train.json", "segmentation.json", "evaluate.json", "segmentation_evaluate.json")
    extra = (*TINY_UNET, "--output_dir", str(out))
    result = _run(tiny, "evaluate_unet", *configs, extra=extra, run_id="evaluating")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    report = out / "evaluation"
    lesions = json.loads((report / "metrics.json").read_text())
    assert lesions["detail"]["images"] == 2 and "test_mean_f1" in lesions["metrics"]
    pixels = json.loads((report / "pixel_metrics.json").read_text())
    assert pixels["detail"]["images"] == 2
    names = {f"test_pixel_{g}_{s}" for g in ("lesion", "malignant") for s in ("dice", "precision", "sensitivity")}
    assert names <= set(pixels["metrics"])
    confusion = np.asarray(pixels["detail"]["confusion"])
    assert confusion.shape == (class_map.num_classes + 1,) * 2 and confusion.sum() == 2 * 96 * 96
    assert set(pixels["detail"]["per_class"]) == set(class_map.names)
    assert "malignant vs the rest" in (report / "pixel_metrics.md").read_text()


def test_segmentation_evaluate_json_scores_a_detector_on_the_same_pixel_scale(tiny, class_map):
    """The pixel protocol after evaluate.json on MaligNet: its lesions painted at its operating threshold."""
    from malignet_bundle.networks.malignet import MaligNet

    (tiny / "evaluate_malignet").mkdir()
    torch.manual_seed(0)
    network = {"backbone": "resnet18", "pyramid_channels": 16, "representation_size": 32, "global_channels": 16}
    torch.save(MaligNet(image_size=96, **network).state_dict(), tiny / "evaluate_malignet" / "model.pt")
    out = tiny / "evaluate_malignet_out"
    extra = ("--output_dir", str(out), "--score_threshold", "0.0")
    extra += tuple(a for k, v in network.items() for a in (f"--network_def#{k}", str(v)))
    configs = ("train.json", "evaluate.json", "segmentation_evaluate.json")
    result = _run(tiny, "evaluate_malignet", *configs, extra=extra, run_id="evaluating")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    pixels = json.loads((out / "evaluation" / "pixel_metrics.json").read_text())
    assert pixels["detail"]["images"] == 2 and "test_pixel_malignant_dice" in pixels["metrics"]
    assert np.asarray(pixels["detail"]["confusion"]).sum() == 2 * 96 * 96


def test_inference_json_serves_a_unet_through_the_bundle_runner(tiny, class_map):
    """train.json, inference.json, then segmentation.json: the whole-body outputs of MaligNet, from a U-Net."""
    model_dir = tiny / "infer_unet"
    model_dir.mkdir()
    torch.manual_seed(0)
    unet = _unet(class_map)
    torch.save(unet.state_dict(), model_dir / "model.pt")
    shutil.copy(tiny / "chest.pt", model_dir / "chest_detector.pt")
    out = tiny / "infer_unet_out"
    configs = ("train.json", "inference.json", "segmentation.json")
    extra = (*TINY_UNET, "--output_dir", str(out), "--score_threshold", "0.0")
    result = _run(tiny, "infer_unet", *configs, extra=extra, run_id="run")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    study = load_datalist(tiny / "data" / "datalist.json")["test"][0]  # one study, two views
    folder = out / study["patient_id"]
    report = json.loads((folder / "report.json").read_text())
    assert report["model"]["checkpoint"] == str(model_dir / "model.pt")
    assert [view["view"] for view in report["views"]] == ["anterior", "posterior"]
    # an untrained U-Net at threshold 0 paints lesions: every one is reported, scored by its mean probability
    assert report["lesions"] and all(0.0 <= lesion["score"] <= 1.0 for lesion in report["lesions"])
    assert {lesion["class_name"] for lesion in report["lesions"]} <= set(class_map.names)
    _, _, masks = read_dicom_seg_masks(folder / "seg_anterior.dcm")
    assert masks.shape == (1024, 256, class_map.num_classes)
    assert (folder / "overlay.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("double", [False, True], ids=["unet", "double_unet"])
def test_ckpt_export_scripts_the_pixel_level_network_from_model_pt(tmp_path, class_map, double):
    """MONAI's ``ckpt_export`` of ``export_network_def``: the scripted network's probabilities are the trained one's."""
    classes = class_map.num_classes + 1
    features = [8, 16, 32] if double else json.loads(TINY_UNET[1])
    torch.manual_seed(0)
    if double:
        network = DoubleUNet(out_channels=classes, features=features)
    else:
        network = BasicUNet(spatial_dims=2, in_channels=1, out_channels=classes, features=features)
    trained = SemanticSegmenter(network, classes)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    configs = ["train.json", "inference.json", "segmentation.json", *(["double_unet.json"] if double else [])]
    # what `python -m monai.bundle ckpt_export export_network_def --config_file ...` calls, in this process
    ckpt_export(
        net_id="export_network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        config_file=[str(ROOT / "configs" / name) for name in configs],
        bundle_root=str(ROOT),
        ckpt_dir=str(tmp_path),
        segmentation_features=features,
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    crops = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(1))
    trained.eval()
    with torch.no_grad():
        expected, got = trained.probabilities(list(crops)), scripted(crops)
    assert got.shape == (2, classes, 64, 48)
    torch.testing.assert_close(got, expected)

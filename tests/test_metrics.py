"""Hand-worked cases for every metric family of thesis §3.8 / design §6."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from malignet_bundle.metrics import evaluation as ev
from malignet_bundle.metrics.lesion import LesionF1

SIZE = 20


def box(x0, y0, x1, y1):
    m = torch.zeros((SIZE, SIZE), dtype=torch.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def pred(masks, labels, scores):
    masks = torch.stack(masks).float()[:, None] if masks else torch.zeros((0, 1, SIZE, SIZE))
    return {"masks": masks, "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.tensor(scores)}


def truth(masks, labels, patient="P"):
    masks = torch.stack(masks) if masks else torch.zeros((0, SIZE, SIZE), dtype=torch.uint8)
    return {"masks": masks, "labels": torch.tensor(labels, dtype=torch.long), "patient_id": patient}


A, B = box(0, 0, 4, 4), box(10, 10, 14, 14)  # two 16-pixel lesions


def test_perfect_predictions_score_one_everywhere():
    result = ev.evaluate_lesions([pred([A, B], [1, 3], [0.9, 0.8])], [truth([A, B], [1, 3])], num_classes=4)
    s = result.scalars
    for key in ("mean_precision", "mean_sensitivity", "mean_f1", "localization_f1", "pixel_dice", "ap", "ap50"):
        assert s[key] == pytest.approx(1.0), key
    assert s["froc_sensitivity_at_0.125"] == 1.0 and s["metastasis_image_f1"] == 1.0


def test_no_predictions_and_no_ground_truth():
    none = ev.evaluate_lesions([pred([], [], [])], [truth([A], [1])], num_classes=4).scalars
    assert none["mean_sensitivity"] == 0.0 and none["mean_precision"] == 0.0 and none["ap"] == 0.0
    assert none["metastasis_image_recall"] == 0.0 and none["pixel_dice"] == 0.0
    empty = ev.evaluate_lesions([pred([A], [1], [0.9])], [truth([], [])], num_classes=4)
    assert empty.scalars["localization_precision"] == 0.0 and math.isnan(empty.scalars["ap"])
    assert empty.per_image[0]["metastasis"] == "FP" and empty.per_image[0]["false_positives"] == 1


def test_two_predictions_on_one_lesion_match_once():
    result = ev.evaluate_lesions([pred([A, A], [1, 1], [0.6, 0.9])], [truth([A], [1])], num_classes=4)
    seg = result.detail["segmentation"]["per_class"][1]
    assert (seg["precision"], seg["sensitivity"]) == (0.5, 1.0)
    assert seg["f1"] == pytest.approx(2 / 3)
    records = ev.image_records([pred([A, A], [1, 1], [0.6, 0.9])], [truth([A], [1])])
    assert records[0].pairs == [(1, 0)]  # the higher score takes the lesion


def test_right_place_wrong_class():
    result = ev.evaluate_lesions([pred([A], [2], [0.9])], [truth([A], [1])], num_classes=4)
    assert result.scalars["localization_f1"] == 1.0
    assert result.scalars["mean_f1"] == 0.0  # class-aware: a false positive of 2 and a miss of 1
    confusion = result.detail["classification"]["confusion"]
    assert confusion[0, 1] == 1 and confusion.sum() == 1
    malignant = result.detail["classification"]["per_class"][1]
    assert malignant["sensitivity"] == 0.0 and malignant["accuracy"] == 0.0
    assert result.per_image[0]["metastasis"] == "FN"


def test_iou_just_under_and_just_over_the_threshold():
    gt = box(0, 0, 10, 10)  # 100 pixels
    under = box(0, 0, 10, 5)  # IoU 50/100 = 0.5 exactly: a match (≥)
    less = box(0, 0, 7, 7)  # IoU 49/100: no match
    more = box(0, 0, 10, 6)  # IoU 0.6
    for mask, matched in ((less, 0), (under, 1), (more, 1)):
        r = ev.image_records([pred([mask], [1], [0.9])], [truth([gt], [1])])[0]
        assert len(r.pairs) == matched
    just_over = ev.image_records([pred([box(0, 0, 7, 7)], [1], [0.9])], [truth([gt], [1])], iou_threshold=0.48)
    assert len(just_over[0].pairs) == 1


def test_class_weighted_means_follow_ground_truth_support():
    # class 1: 3 lesions, all found; class 3: 1 lesion, missed (predicted as nothing)
    masks = [box(0, 0, 3, 3), box(5, 0, 8, 3), box(10, 0, 13, 3), box(15, 15, 18, 18)]
    result = ev.evaluate_lesions([pred(masks[:3], [1, 1, 1], [0.9, 0.8, 0.7])], [truth(masks, [1, 1, 1, 3])], 4)
    assert result.scalars["mean_sensitivity"] == pytest.approx(0.75)  # 3/4·1 + 1/4·0
    assert result.scalars["mean_precision"] == pytest.approx(0.75)  # class 3 predicted none: precision 0
    assert result.scalars["localization_sensitivity"] == pytest.approx(0.75)


def test_metastasis_per_image_and_per_patient():
    predictions = [
        pred([A], [1], [0.9]),  # P1 anterior: malignant found -> TP
        pred([], [], []),  # P1 posterior: malignant missed -> FN
        pred([B], [1], [0.9]),  # P2 anterior: no malignant truth, malignant predicted -> FP
        pred([], [], []),  # P2 posterior -> TN
        pred([B], [3], [0.9]),  # P3: only degenerative truth and prediction -> TN
    ]
    targets = [
        truth([A], [1], "P1"),
        truth([B], [1], "P1"),
        truth([A], [3], "P2"),
        truth([], [], "P2"),
        truth([B], [3], "P3"),
    ]
    m = ev.metastasis_metrics(ev.image_records(predictions, targets), malignant_label=1)
    assert m["outcomes"] == ["TP", "FN", "FP", "TN", "TN"]
    assert (m["image"]["tp"], m["image"]["fn"], m["image"]["fp"], m["image"]["tn"]) == (1, 1, 1, 2)
    assert m["image"]["accuracy"] == pytest.approx(3 / 5) and m["image"]["specificity"] == pytest.approx(2 / 3)
    # patients: P1 TP (one view is enough), P2 FP, P3 TN
    assert (m["patient"]["tp"], m["patient"]["fp"], m["patient"]["tn"], m["patient"]["fn"]) == (1, 1, 1, 0)
    assert m["patient"]["recall"] == 1.0 and m["patient"]["precision"] == 0.5


def test_froc_at_known_false_positive_rates():
    # 2 images, 2 lesions. Scores: TP 0.9 (image 1), FP 0.8, FP 0.7, TP 0.6 (image 2)
    predictions = [pred([A, B], [1, 1], [0.9, 0.8]), pred([B, A], [1, 1], [0.7, 0.6])]
    targets = [truth([A], [1]), truth([A], [1])]
    curve = ev.froc(ev.image_records(predictions, targets))
    points = curve["operating_points"]
    assert points[0.125] == 0.5  # before any FP
    assert points[0.5] == 0.5  # 1 FP over 2 images = 0.5 FP/image, still one lesion found
    assert points[1.0] == 1.0  # 2 FPs over 2 images -> the 0.6 TP comes in
    assert curve["cpm"] == pytest.approx((0.5 * 3 + 1.0 * 4) / 7)


def test_pixel_dice_with_a_known_overlap():
    p = pred([box(0, 0, 4, 4)], [1], [0.9])  # 16 px
    t = truth([box(2, 0, 6, 4)], [1])  # 16 px, overlap 8
    pixels = ev.evaluate_lesions([p], [t], 4).detail["pixel"]
    assert pixels["dice"] == pytest.approx(0.5) and pixels["precision"] == pytest.approx(0.5)


def test_coco_ap_equals_pycocotools_on_a_fixture():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    predictions, targets = [], []
    for _ in range(4):
        gts = [box(*(int(v) for v in (x, y, x + 5, y + 4))) for x, y in rng.integers(0, 14, (3, 2))]
        labels = rng.integers(1, 5, 3).tolist()
        shifted = [torch.roll(m, int(rng.integers(0, 3)), dims=1) for m in gts]
        predictions.append(pred(shifted + [box(0, 15, 4, 19)], [*labels, 2], rng.random(4).tolist()))
        targets.append(truth(gts, labels))
    ours = ev.coco_ap(ev.image_records(predictions, targets), num_classes=4)

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        return r

    gt_anns, dets = [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True), start=1):
        for m, c in zip(t["masks"], t["labels"], strict=True):
            r = rle(m)
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "segmentation": r,
                    "area": float(m.sum()),
                    "bbox": list(mask_utils.toBbox(r)),
                    "iscrowd": 0,
                }
            )
        for m, c, s in zip(p["masks"][:, 0], p["labels"], p["scores"], strict=True):
            dets.append({"image_id": i, "category_id": int(c), "segmentation": rle(m > 0.5), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i, "height": SIZE, "width": SIZE} for i in range(1, 5)],
            "annotations": gt_anns,
            "categories": [{"id": c} for c in range(1, 5)],
        }
        coco.createIndex()
        reference = COCOeval(coco, coco.loadRes(dets), "segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert 0 < ours["ap"] < 1
    assert ours["ap"] == pytest.approx(reference.stats[0]) and ours["ap50"] == pytest.approx(reference.stats[1])


def test_ignite_metric_equals_the_plain_function():
    predictions = [pred([A, B], [1, 2], [0.9, 0.4]), pred([B], [3], [0.8]), pred([], [], [])]
    targets = [truth([A], [1], "P1"), truth([B], [1], "P1"), truth([A, B], [4, 3], "P2")]
    batches = [(predictions[:2], targets[:2]), (predictions[2:], targets[2:])]
    engine = Engine(lambda e, batch: batch)
    metric = ev.LesionMetrics(num_classes=4, prefix="test_")
    metric.attach(engine, "test")
    LesionF1(num_classes=4).attach(engine, "test_mean_f1_key")
    engine.run(batches, max_epochs=1)
    expected = ev.evaluate_lesions(predictions, targets, 4).scalars
    for key, value in expected.items():
        assert engine.state.metrics[f"test_{key}"] == pytest.approx(value, nan_ok=True), key
    assert engine.state.metrics["test_mean_f1_key"] == pytest.approx(expected["mean_f1"])
    assert metric.last_result is not None and len(metric.last_result.per_image) == 3
    assert [row["patient_id"] for row in metric.last_result.per_image] == ["P1", "P1", "P2"]

"""Hand-worked cases for every metric family of thesis §3.8 (malignet_bundle.metrics)."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from malignet_bundle.metrics import evaluation as ev
from malignet_bundle.metrics.lesion import LesionF1, binarize_masks, mask_iou, match_lesions, match_pairs
from malignet_bundle.metrics.operating_point import OperatingPointF1, choose_operating_threshold
from malignet_bundle.metrics.records import image_records

SIZE = 16
RATES = ("0.125", "0.25", "0.5", "1", "2", "4", "8")


def box(x0, y0, x1, y1):
    m = torch.zeros((SIZE, SIZE), dtype=torch.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def pred(masks, labels, scores):
    """Detector-style prediction: (N, 1, H, W) probabilities."""
    masks = torch.stack(masks).float()[:, None] * 0.9 if masks else torch.zeros((0, 1, SIZE, SIZE))
    return {"masks": masks, "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.tensor(scores)}


def truth(masks, labels, patient=None):
    masks = torch.stack(masks) if masks else torch.zeros((0, SIZE, SIZE), dtype=torch.uint8)
    target = {"masks": masks, "labels": torch.tensor(labels, dtype=torch.long)}
    if patient is not None:
        target["patient_id"] = patient
    return target


A, B = box(0, 0, 4, 4), box(10, 10, 14, 14)  # two 16-pixel lesions, far apart
GT10 = box(0, 0, 10, 10)  # 100 pixels


def iou_049():
    return box(0, 0, 7, 7)  # 49 pixels inside GT10: IoU 0.49


def iou_051():
    m = box(0, 0, 10, 5)  # 50 pixels inside GT10 ...
    m[5, 0] = 1  # ... plus one: IoU 0.51
    return m


# --- matching ------------------------------------------------------------------------------------------------------


def test_binarize_masks_thresholds_probabilities_and_keeps_binary_masks():
    probs = torch.tensor([0.5, 0.51, 0.2, 1.0]).reshape(1, 1, 2, 2)
    assert binarize_masks(probs).tolist() == [[[False, True], [False, True]]]
    labels = torch.tensor([[[0, 1], [2, 0]]], dtype=torch.uint8)
    assert binarize_masks(labels).tolist() == [[[False, True], [True, False]]]


def test_iou_just_under_and_just_over_the_threshold():
    assert mask_iou(iou_049()[None], GT10[None]).item() == pytest.approx(0.49)
    assert mask_iou(iou_051()[None], GT10[None]).item() == pytest.approx(0.51)
    under = ev.evaluate_lesions([pred([iou_049()], [1], [0.9])], [truth([GT10], [1])], 4)
    over = ev.evaluate_lesions([pred([iou_051()], [1], [0.9])], [truth([GT10], [1])], 4)
    assert under.scalars["localization_f1"] == 0.0 and under.scalars["mean_f1"] == 0.0
    assert under.per_image[0]["localization_fp"] == 1 and under.per_image[0]["localization_fn"] == 1
    assert over.scalars["localization_f1"] == 1.0 and over.scalars["mean_f1"] == 1.0
    # the threshold is configurable
    lenient = ev.evaluate_lesions([pred([iou_049()], [1], [0.9])], [truth([GT10], [1])], 4, iou_threshold=0.45)
    strict = ev.evaluate_lesions([pred([iou_051()], [1], [0.9])], [truth([GT10], [1])], 4, iou_threshold=0.55)
    assert lenient.scalars["localization_f1"] == 1.0 and strict.scalars["localization_f1"] == 0.0


def test_matching_is_greedy_by_score_and_one_to_one():
    # the higher score takes the lesion whatever the order; equal scores: the lower index first
    assert match_lesions(torch.stack([A, A]), torch.tensor([0.6, 0.9]), A[None]) == [(1, 0)]
    assert match_lesions(torch.stack([A, A]), torch.tensor([0.7, 0.7]), A[None]) == [(0, 0)]
    # a prediction overlapping two lesions takes the one of highest IoU; the other stays for the next prediction
    wide, left, right = box(0, 0, 8, 4), box(0, 0, 5, 4), box(4, 0, 8, 4)
    pairs = match_lesions(torch.stack([wide, right]), torch.tensor([0.9, 0.8]), torch.stack([left, right]))
    assert pairs == [(0, 0), (1, 1)]


# --- Table 4 / Table 5 -----------------------------------------------------------------------------------------------


def test_perfect_predictions_score_one_everywhere():
    result = ev.evaluate_lesions([pred([A, B], [1, 3], [0.9, 0.8])], [truth([A, B], [1, 3])], num_classes=4)
    s = result.scalars
    for key in ("mean_precision", "mean_sensitivity", "mean_f1", "localization_f1", "classification_accuracy"):
        assert s[key] == 1.0, key
    for key in ("pixel_dice", "ap", "ap50", "ap75", "froc_cpm", "metastasis_image_f1", "metastasis_patient_f1"):
        assert s[key] == pytest.approx(1.0), key
    assert s["class_1_f1"] == 1.0 and s["class_3_f1"] == 1.0 and s["class_2_f1"] == 0.0  # class 2: no support


def test_two_predictions_on_one_lesion_match_once():
    result = ev.evaluate_lesions([pred([A, A], [1, 1], [0.6, 0.9])], [truth([A], [1])], num_classes=4)
    seg = result.detail["segmentation"]["per_class"][1]
    assert (seg["precision"], seg["sensitivity"], seg["predicted"], seg["matched"]) == (0.5, 1.0, 2, 1)
    assert seg["f1"] == pytest.approx(2 / 3) and result.scalars["mean_f1"] == pytest.approx(2 / 3)
    assert result.detail["localization"] == pytest.approx({"precision": 0.5, "sensitivity": 1.0, "f1": 2 / 3})
    row = result.per_image[0]
    assert (row["localization_tp"], row["localization_fp"], row["localization_fn"]) == (1, 1, 0)
    assert result.detail["froc"]["fp_per_image"] == [0.0, 1.0]  # the 0.9 is the TP, the 0.6 the FP


def test_right_place_wrong_class():
    result = ev.evaluate_lesions([pred([A], [2], [0.9])], [truth([A], [1])], num_classes=4)
    s = result.scalars
    assert s["localization_precision"] == 1.0 and s["localization_sensitivity"] == 1.0
    assert s["mean_f1"] == 0.0 and s["class_1_sensitivity"] == 0.0 and s["class_2_precision"] == 0.0
    seg = result.detail["segmentation"]["per_class"]
    assert (seg[1]["support"], seg[1]["matched"], seg[2]["predicted"], seg[2]["matched"]) == (1, 0, 1, 0)
    cls = result.detail["classification"]
    assert cls["confusion"].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert cls["confusion_normalised"][0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert cls["per_class"][1]["sensitivity"] == 0.0 and cls["per_class"][2]["specificity"] == 0.0
    assert cls["per_class"][3]["accuracy"] == 1.0  # a true negative for class 3
    assert s["classification_accuracy"] == 0.0 and s["classification_mean_accuracy"] == 0.0
    assert result.per_image[0]["metastasis"] == "FN"
    assert s["ap"] == 0.0 and math.isnan(result.detail["coco"]["per_class"][2]["ap"])


def _wrong_class_duplicate():
    """Image 1: a malignant lesion, found by a wrong-class detection (0.9) above a right-class one (0.8) on the
    same mask; image 2: a class-3 lesion found by one right detection. The two matching rules differ on image 1.
    """
    predictions = [pred([A, A], [2, 1], [0.9, 0.8]), pred([B], [3], [0.95])]
    return predictions, [truth([A], [1]), truth([B], [3])]


def test_matching_rules_differ_on_a_wrong_class_duplicate():
    predictions, targets = _wrong_class_duplicate()
    agnostic = ev.evaluate_lesions(predictions, targets, 4)  # the default rule
    per_class = ev.evaluate_lesions(predictions, targets, 4, matching="per_class")
    # class-agnostic: the 0.9 class-2 detection takes the lesion, the class-1 one is a false positive
    seg = agnostic.detail["segmentation"]["per_class"]
    assert [(seg[c]["predicted"], seg[c]["support"], seg[c]["matched"]) for c in (1, 2, 3)] == [
        (1, 1, 0),
        (1, 0, 0),
        (1, 1, 1),
    ]
    assert (agnostic.scalars["mean_precision"], agnostic.scalars["mean_sensitivity"]) == (0.5, 0.5)
    assert agnostic.scalars["mean_f1"] == 0.5 and agnostic.scalars["class_1_f1"] == 0.0
    assert agnostic.detail["matching"] == "class_agnostic"
    # per class (COCO-style): the class-1 detection takes it, the class-2 one is the false positive
    seg = per_class.detail["segmentation"]["per_class"]
    assert [(seg[c]["predicted"], seg[c]["support"], seg[c]["matched"]) for c in (1, 2, 3)] == [
        (1, 1, 1),
        (1, 0, 0),
        (1, 1, 1),
    ]
    assert per_class.scalars["mean_f1"] == 1.0 and per_class.scalars["class_1_precision"] == 1.0
    assert per_class.scalars["class_2_precision"] == 0.0
    # Table 7 follows the rule: the malignant lesion is found only when the malignant detection may take it
    assert [row["metastasis"] for row in agnostic.per_image] == ["FN", "TN"]
    assert [row["metastasis"] for row in per_class.per_image] == ["TP", "TN"]
    assert [row["matched_same_class"] for row in agnostic.per_image] == [0, 1]
    assert [row["matched_same_class"] for row in per_class.per_image] == [1, 1]
    for result in (agnostic, per_class):
        s = result.scalars
        # localization and classification ignore the class by definition: 2 of 3 detections on 2 lesions
        assert s["localization_precision"] == pytest.approx(2 / 3) and s["localization_f1"] == pytest.approx(0.8)
        assert result.detail["classification"]["confusion"][0].tolist() == [0, 1, 0, 0]
        assert [row["localization_tp"] for row in result.per_image] == [1, 1]
        # Table 4 under both rules, whatever the headline rule
        assert s["mean_f1_class_agnostic_matching"] == 0.5 and s["mean_f1_per_class_matching"] == 1.0
        assert s["mean_precision_per_class_matching"] == 1.0
    # the same figures at the model's own operating threshold, and the key metric under each rule
    at = ev.evaluate_lesions(predictions, targets, 4, matching="per_class", operating_threshold=0.85)
    assert at.scalars["operating_mean_f1"] == 0.5  # above 0.85 only the wrong-class detection is left on image 1
    assert at.scalars["operating_mean_f1_per_class_matching"] == 0.5
    for rule, expected in (("class_agnostic", 0.5), ("per_class", 1.0)):
        key = LesionF1(num_classes=4, matching=rule)
        key.update((predictions, targets))
        assert key.compute() == expected
        metric = ev.LesionMetrics(num_classes=4, matching=rule)
        metric.update((predictions, targets))
        assert metric.compute()["mean_f1"] == expected


def test_per_class_matching_on_an_iou_matrix_and_bad_rules():
    iou = np.array([[0.9, 0.6], [0.8, 0.0]])
    scores, pred_labels, gt_labels = np.array([0.9, 0.8]), np.array([2, 1]), np.array([1, 2])
    assert match_pairs(iou, scores, pred_labels, gt_labels) == [(0, 0)]  # highest IoU first, class ignored
    assert match_pairs(iou, scores, pred_labels, gt_labels, matching="per_class") == [(0, 1), (1, 0)]
    assert match_pairs(iou, scores, pred_labels, gt_labels, 0.7, "per_class") == [(1, 0)]  # 0.6 is too little
    assert match_pairs(np.zeros((0, 1)), np.zeros(0), np.zeros(0), np.array([1]), matching="per_class") == []
    predictions, targets = _wrong_class_duplicate()
    with pytest.raises(ValueError, match="matching must be one of"):
        ev.evaluate_lesions(predictions, targets, 4, matching="coco")
    with pytest.raises(ValueError, match="matching must be one of"):
        LesionF1(matching="per-class")
    with pytest.raises(ValueError, match="needs pred_labels"):
        match_lesions(A[None], torch.tensor([0.9]), A[None], matching="per_class")


def test_class_weighted_means_follow_ground_truth_support():
    # class 1: 3 lesions, all found; class 3: 1 lesion, missed; a false positive of class 2
    masks = [box(0, 0, 3, 3), box(5, 0, 8, 3), box(10, 0, 13, 3), box(12, 12, 15, 15)]
    predictions = [pred([*masks[:3], box(0, 10, 3, 13)], [1, 1, 1, 2], [0.9, 0.8, 0.7, 0.6])]
    result = ev.evaluate_lesions(predictions, [truth(masks, [1, 1, 1, 3])], 4)
    assert result.scalars["mean_sensitivity"] == pytest.approx(0.75)  # 3/4·1 + 1/4·0
    assert result.scalars["mean_precision"] == pytest.approx(0.75)  # class 3 predicted none: precision 0
    assert result.scalars["mean_f1"] == pytest.approx(0.75)  # class 2 has no support: weight 0
    assert result.scalars["localization_precision"] == pytest.approx(0.75)
    assert result.scalars["localization_sensitivity"] == pytest.approx(0.75)


def test_other_class_maps_work():
    result = ev.evaluate_lesions([pred([A, B], [2, 2], [0.9, 0.8])], [truth([A, B], [1, 2])], num_classes=2)
    assert result.detail["classification"]["confusion"].tolist() == [[0, 1], [0, 1]]
    assert "class_3_f1" not in result.scalars and result.scalars["class_2_precision"] == 0.5
    with pytest.raises(ValueError, match="outside 1..2"):
        ev.evaluate_lesions([pred([A], [3], [0.9])], [truth([A], [1])], num_classes=2)


# --- Table 6 -----------------------------------------------------------------------------------------------------


def test_classification_one_vs_rest_on_matched_pairs():
    boxes = [box(x, y, x + 3, y + 3) for x, y in ((0, 0), (5, 0), (10, 0), (0, 5), (5, 5))]
    gt_labels, pred_labels = [1, 1, 1, 3, 2], [1, 1, 2, 3, 1]
    unmatched = box(12, 12, 15, 15)  # a false positive: not a pair, so not in Table 6
    predictions = [pred([*boxes, unmatched], [*pred_labels, 4], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])]
    cls = ev.classification_metrics(ev.image_records(predictions, [truth(boxes, gt_labels)]), num_classes=4)
    assert cls["confusion"].tolist() == [[2, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    c1, c2, c3, c4 = (cls["per_class"][c] for c in (1, 2, 3, 4))
    assert (c1["tp"], c1["fp"], c1["fn"], c1["tn"]) == (2, 1, 1, 1)
    assert c1["accuracy"] == pytest.approx(3 / 5) and c1["specificity"] == pytest.approx(1 / 2)
    assert c1["precision"] == pytest.approx(2 / 3) and c1["f1"] == pytest.approx(2 / 3)
    assert (c2["precision"], c2["sensitivity"]) == (0.0, 0.0) and c2["specificity"] == pytest.approx(3 / 4)
    assert (c3["accuracy"], c3["f1"]) == (1.0, 1.0) and (c4["support"], c4["specificity"]) == (0, 1.0)
    assert cls["accuracy"] == pytest.approx(3 / 5)
    assert cls["mean_accuracy"] == pytest.approx((3 * 0.6 + 0.6 + 1.0) / 5)  # supports 3, 1, 1
    assert cls["mean_sensitivity"] == pytest.approx((3 * 2 / 3 + 0 + 1) / 5)
    assert cls["confusion_normalised"][0] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert cls["confusion_normalised"][3].tolist() == [0, 0, 0, 0]  # no support: zeros, not nan


# --- Table 7 -----------------------------------------------------------------------------------------------------


def test_metastasis_per_image_and_per_patient():
    predictions = [
        pred([A], [1], [0.9]),  # P1 anterior: malignant found -> TP
        pred([], [], []),  # P1 posterior: malignant missed -> FN
        pred([B], [1], [0.9]),  # P2 anterior: no malignant truth, malignant predicted -> FP
        pred([], [], []),  # P2 posterior -> TN
        pred([B], [3], [0.9]),  # P3 anterior: only degenerative truth and prediction -> TN
        pred([A, B], [3, 1], [0.9, 0.8]),  # P4 anterior: malignant lesion found as degenerative, FP elsewhere -> FN
        pred([B], [1], [0.9]),  # P4 posterior: no truth, malignant predicted -> FP
    ]
    targets = [
        truth([A], [1]),
        truth([B], [1]),
        truth([A], [3]),
        truth([], []),
        truth([B], [3]),
        truth([A], [1]),
        truth([], []),
    ]
    patients = ["P1", "P1", "P2", "P2", "P3", "P4", "P4"]
    m = ev.metastasis_metrics(ev.image_records(predictions, targets, patient_ids=patients), malignant_label=1)
    assert m["outcomes"] == ["TP", "FN", "FP", "TN", "TN", "FN", "FP"]
    image = m["image"]
    assert (image["tp"], image["fp"], image["fn"], image["tn"]) == (1, 2, 2, 2)
    assert image["accuracy"] == pytest.approx(3 / 7) and image["specificity"] == pytest.approx(2 / 4)
    assert image["precision"] == pytest.approx(1 / 3) and image["recall"] == pytest.approx(1 / 3)
    # patients: P1 TP (one view is enough), P2 FP, P3 TN, P4 FN (positive, no TP view, despite its FP view)
    assert m["patients"] == {"P1": "TP", "P2": "FP", "P3": "TN", "P4": "FN"}
    patient = m["patient"]
    assert patient["accuracy"] == 0.5 and patient["recall"] == 0.5 and patient["precision"] == 0.5
    assert patient["specificity"] == 0.5 and patient["f1"] == pytest.approx(0.5)


def test_patient_ids_come_from_targets_or_default_to_one_per_image():
    predictions = [pred([A], [1], [0.9]), pred([], [], [])]
    with_ids = ev.evaluate_lesions(predictions, [truth([A], [1], "P"), truth([A], [1], "P")], 4)
    without = ev.evaluate_lesions(predictions, [truth([A], [1]), truth([A], [1])], 4)
    assert with_ids.scalars["metastasis_patient_recall"] == 1.0  # one patient, TP through its first view
    assert without.scalars["metastasis_patient_recall"] == 0.5  # two patients, one missed
    assert [r["patient_id"] for r in with_ids.per_image] == ["P", "P"]
    renamed = ev.evaluate_lesions(predictions, [truth([A], [1]), truth([A], [1])], 4, patient_ids=["X", "X"])
    assert renamed.detail["metastasis"]["patients"] == {"X": "TP"}


def test_malignant_label_is_an_argument():
    predictions, targets = [pred([A], [2], [0.9])], [truth([A], [2])]
    assert ev.evaluate_lesions(predictions, targets, 4).per_image[0]["metastasis"] == "TN"
    assert ev.evaluate_lesions(predictions, targets, 4, malignant_label=2).per_image[0]["metastasis"] == "TP"


# --- degenerate inputs -----------------------------------------------------------------------------------------


def test_no_predictions():
    result = ev.evaluate_lesions([pred([], [], [])], [truth([A], [1])], num_classes=4)
    s = dict(result.scalars)
    assert s.pop("best_mean_f1_threshold") == 0.05  # F1 is 0 everywhere: the lowest threshold on the tie
    assert all(v == 0.0 for v in s.values()), {k: v for k, v in s.items() if v != 0.0}
    assert s["ap"] == 0.0 and s["ap50"] == 0.0 and s["froc_cpm"] == 0.0 and s["pixel_dice"] == 0.0
    assert result.per_image[0]["metastasis"] == "FN" and result.per_image[0]["localization_fn"] == 1
    assert result.detail["froc"]["fp_per_image"] == [] and result.detail["coco"]["per_class"][1]["ap"] == 0.0


def test_no_ground_truth():
    result = ev.evaluate_lesions([pred([A], [1], [0.9])], [truth([], [])], num_classes=4)
    s = result.scalars
    assert s["localization_precision"] == 0.0 and s["mean_f1"] == 0.0 and s["pixel_precision"] == 0.0
    assert math.isnan(s["ap"]) and math.isnan(s["ap50"]) and math.isnan(s["ap75"])
    assert s["froc_cpm"] == 0.0 and result.detail["froc"]["fp_per_image"] == [1.0]
    assert result.per_image[0]["metastasis"] == "FP" and result.per_image[0]["localization_fp"] == 1
    assert s["metastasis_image_specificity"] == 0.0 and s["metastasis_image_accuracy"] == 0.0
    assert [k for k, v in s.items() if math.isnan(v)] == ["ap", "ap50", "ap75"]


def test_nothing_at_all():
    empty = ev.evaluate_lesions([], [], num_classes=4)
    assert empty.per_image == [] and empty.detail["images"] == 0 and math.isnan(empty.scalars["ap"])
    blank = ev.evaluate_lesions([pred([], [], [])], [truth([], [])], num_classes=4)
    assert blank.per_image[0]["metastasis"] == "TN" and blank.scalars["metastasis_image_specificity"] == 1.0
    assert blank.scalars["pixel_dice"] == 0.0 and blank.scalars["mean_f1"] == 0.0


# --- FROC --------------------------------------------------------------------------------------------------------


def test_froc_at_known_false_positive_rates():
    # 2 images, 2 lesions. Scores: TP 0.9 (image 1), FP 0.8, FP 0.7, TP 0.6 (image 2)
    predictions = [pred([A, B], [1, 1], [0.9, 0.8]), pred([B, A], [1, 1], [0.7, 0.6])]
    targets = [truth([A], [1]), truth([A], [1])]
    curve = ev.froc(ev.image_records(predictions, targets))
    assert curve["fp_per_image"] == [0.0, 0.5, 1.0, 1.0] and curve["sensitivity"] == [0.5, 0.5, 0.5, 1.0]
    assert curve["thresholds"] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    points = curve["operating_points"]
    assert points[0.125] == 0.5 and points[0.25] == 0.5  # before any FP
    assert points[0.5] == 0.5  # 1 FP over 2 images = 0.5 FP/image, still one lesion found
    assert points[1.0] == 1.0 and points[8.0] == 1.0  # 2 FPs over 2 images -> the 0.6 TP comes in
    assert curve["cpm"] == pytest.approx((0.5 * 3 + 1.0 * 4) / 7)
    scalars = ev.evaluate_lesions(predictions, targets, 4).scalars
    assert scalars["froc_sensitivity_at_0.5"] == 0.5 and scalars["froc_sensitivity_at_1"] == 1.0


def test_froc_keeps_equal_scores_together():
    # a TP and a FP of the same score: no threshold keeps one without the other
    curve = ev.froc(ev.image_records([pred([A, B], [1, 1], [0.5, 0.5])], [truth([A], [1])]))
    assert curve["fp_per_image"] == [1.0] and curve["sensitivity"] == [1.0]
    assert curve["operating_points"][0.5] == 0.0 and curve["operating_points"][1.0] == 1.0


def test_froc_one_matching_equals_rematching_at_every_threshold():
    rng = np.random.default_rng(1)
    predictions, targets = [], []
    for _ in range(5):
        gts = [box(x, y, x + 4, y + 4) for x, y in rng.integers(0, 12, (2, 2)).tolist()]
        preds = [box(x, y, x + 4, y + 4) for x, y in rng.integers(0, 12, (6, 2)).tolist()] + gts[:1]
        predictions.append(pred(preds, [1] * len(preds), rng.random(len(preds)).round(1).tolist()))
        targets.append(truth(gts, [1, 1]))
    curve = ev.froc(ev.image_records(predictions, targets))
    n_truth = sum(len(t["labels"]) for t in targets)
    for threshold, fp_rate, sensitivity in zip(
        curve["thresholds"], curve["fp_per_image"], curve["sensitivity"], strict=True
    ):
        tp = fp = 0
        for p, t in zip(predictions, targets, strict=True):
            keep = p["scores"] >= threshold
            pairs = match_lesions(p["masks"][keep, 0] > 0.5, p["scores"][keep], t["masks"] > 0)
            tp, fp = tp + len(pairs), fp + int(keep.sum()) - len(pairs)
        assert (fp / len(targets), tp / n_truth) == pytest.approx((fp_rate, sensitivity))
    assert 0 < curve["sensitivity"][-1] and len(set(curve["fp_per_image"])) > 2


# --- pixels ------------------------------------------------------------------------------------------------------


def test_pixel_dice_with_a_known_overlap_summed_over_images():
    p = pred([box(0, 0, 4, 4)], [1], [0.9])  # 16 px
    t = truth([box(2, 0, 6, 4)], [1])  # 16 px, overlap 8
    pixels = ev.evaluate_lesions([p], [t], 4).detail["pixel"]
    assert pixels["dice"] == pytest.approx(0.5) and pixels["precision"] == pytest.approx(0.5)
    # a second image with a 16-pixel false positive: tp 8, fp 8 + 16, fn 8 (micro, not a mean of images)
    result = ev.evaluate_lesions([p, pred([B], [1], [0.9])], [t, truth([], [])], 4)
    assert result.scalars["pixel_dice"] == pytest.approx(16 / 48)
    assert result.scalars["pixel_precision"] == pytest.approx(8 / 32)
    assert result.scalars["pixel_sensitivity"] == pytest.approx(0.5)
    assert [r["pixel_dice"] for r in result.per_image] == pytest.approx([0.5, 0.0])


def test_pixel_per_class_semantic_maps():
    # class 1 box (0..4) and class 2 box (2..6) overlap in 8 px; the class 2 prediction scores higher
    p = pred([box(0, 0, 4, 4), box(2, 0, 6, 4)], [1, 2], [0.5, 0.9])
    t = truth([box(0, 0, 4, 4)], [1])
    pixels = ev.evaluate_lesions([p], [t], 4).detail["pixel"]
    assert pixels["precision"] == pytest.approx(16 / 24) and pixels["sensitivity"] == 1.0  # union, classless
    per_class = pixels["per_class"]
    assert per_class[1]["precision"] == 1.0 and per_class[1]["sensitivity"] == 0.5  # 8 of its 16 px
    assert per_class[2]["precision"] == 0.0 and per_class[2]["support"] == 0 and per_class[1]["support"] == 16


# --- COCO AP -----------------------------------------------------------------------------------------------------


def _pycocotools_reference(predictions, targets):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        return mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))

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
            "images": [{"id": i, "height": SIZE, "width": SIZE} for i in range(1, len(targets) + 1)],
            "annotations": gt_anns,
            "categories": [{"id": c} for c in range(1, 5)],
        }
        coco.createIndex()
        reference = COCOeval(coco, coco.loadRes(dets), "segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference.stats


def test_coco_ap_equals_pycocotools_on_a_fixture():
    rng = np.random.default_rng(0)
    predictions, targets = [], []
    for _ in range(4):
        gts = [box(x, y, x + 5, y + 4) for x, y in rng.integers(0, 11, (3, 2)).tolist()]
        labels = rng.integers(1, 5, 3).tolist()
        shifted = [torch.roll(m, int(rng.integers(0, 3)), dims=1) for m in gts]
        predictions.append(pred([*shifted, box(0, 12, 4, 16)], [*labels, 2], rng.random(4).tolist()))
        targets.append(truth(gts, labels))
    ours = ev.coco_ap(ev.image_records(predictions, targets), num_classes=4)
    reference = _pycocotools_reference(predictions, targets)
    assert 0 < ours["ap"] < 1
    assert (ours["ap"], ours["ap50"], ours["ap75"]) == pytest.approx(tuple(reference[:3]))
    defined = [v["ap"] for v in ours["per_class"].values() if not math.isnan(v["ap"])]
    assert np.mean(defined) == pytest.approx(ours["ap"])  # COCO averages the classes that have ground truth


def test_coco_ap_by_hand():
    # class 1 perfect (AP 1 at every IoU); class 2 at IoU 0.72: matched at 0.50 … 0.70, missed at 0.75 … 0.95
    partial = box(0, 0, 9, 8)  # 72 pixels inside GT10
    predictions = [pred([B, partial], [1, 2], [0.9, 0.8])]
    targets = [truth([B, GT10], [1, 2])]
    coco = ev.coco_ap(ev.image_records(predictions, targets), num_classes=4)
    assert coco["per_class"][1]["ap"] == pytest.approx(1.0) and coco["per_class"][2]["ap"] == pytest.approx(0.5)
    assert coco["ap"] == pytest.approx(0.75) and coco["ap50"] == pytest.approx(1.0)
    assert coco["ap75"] == pytest.approx(0.5) and math.isnan(coco["per_class"][3]["ap"])


def test_coco_ap_keeps_max_detections_per_image():
    # the true positive scores lowest of three: AP 1/3 with the COCO 100, 0 when only two detections count
    predictions = [pred([B, box(10, 0, 14, 4), A], [1, 1, 1], [0.9, 0.8, 0.7])]
    records = ev.image_records(predictions, [truth([A], [1])])
    assert ev.coco_ap(records, 4)["ap50"] == pytest.approx(1 / 3)
    assert ev.coco_ap(records, 4, max_detections=2)["ap50"] == 0.0


# --- names, ignite -----------------------------------------------------------------------------------------------


def test_scalar_names():
    scalars = ev.evaluate_lesions([pred([A], [1], [0.9])], [truth([A], [1])], 4, prefix="test_").scalars
    expected = {
        "mean_precision",
        "mean_sensitivity",
        "mean_f1",
        *(f"class_{c}_{k}" for c in range(1, 5) for k in ("precision", "sensitivity", "f1")),
        "localization_precision",
        "localization_sensitivity",
        "localization_f1",
        "classification_accuracy",
        *(f"classification_mean_{k}" for k in ("accuracy", "precision", "sensitivity", "specificity", "f1")),
        *(
            f"metastasis_{level}_{k}"
            for level in ("image", "patient")
            for k in ("accuracy", "precision", "recall", "specificity", "f1")
        ),
        "ap",
        "ap50",
        "ap75",
        "froc_cpm",
        *(f"froc_sensitivity_at_{r}" for r in RATES),
        "pixel_dice",
        "pixel_precision",
        "pixel_sensitivity",
        "best_mean_f1",
        "best_mean_f1_threshold",
        *(f"mean_{k}_{rule}_matching" for k in ("precision", "sensitivity", "f1") for rule in ev.MATCHING_RULES),
    }
    assert set(scalars) == {f"test_{k}" for k in expected}
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./]+", k) for k in scalars)
    assert all(isinstance(v, float) for v in scalars.values())


def _fixture():
    predictions = [
        pred([A, B], [1, 2], [0.9, 0.4]),
        pred([B], [3], [0.8]),
        pred([], [], []),
        pred([iou_051(), B], [4, 1], [0.7, 0.3]),
    ]
    targets = [truth([A], [1]), truth([B], [1]), truth([A, B], [4, 3]), truth([GT10], [4])]
    return predictions, targets, ["P1", "P1", "P2", "P3"]


def test_ignite_metric_equals_the_plain_function_and_resets():
    predictions, targets, patients = _fixture()
    batches = [(predictions[:2], targets[:2], patients[:2]), (predictions[2:], targets[2:], patients[2:])]
    engine = Engine(lambda e, batch: batch)
    metric = ev.LesionMetrics(num_classes=4, prefix="test_")
    metric.attach(engine, "test")
    LesionF1(num_classes=4).attach(engine, "test_mean_f1_key")
    expected = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients, prefix="test_")
    for _ in range(2):  # a second run must not accumulate the first
        engine.run(batches, max_epochs=1)
        metrics = dict(engine.state.metrics)
        assert set(metrics) == {*expected.scalars, "test_mean_f1_key"}  # flat: no dict under "test"
        assert metrics == pytest.approx({**expected.scalars, "test_mean_f1_key": expected.scalars["test_mean_f1"]})
    # patients: P1 TP, P2 TN, P3 FP (a malignant prediction on its image without malignant truth)
    assert expected.detail["metastasis"]["patients"] == {"P1": "TP", "P2": "TN", "P3": "FP"}
    assert 0 < expected.scalars["test_mean_f1"] < 1 and expected.scalars["test_metastasis_patient_precision"] == 0.5
    assert metric.last_result is not None and metric.last_result.per_image == expected.per_image
    assert [row["patient_id"] for row in metric.last_result.per_image] == patients
    assert metric.last_result.detail["classification"]["confusion"].tolist() == (
        expected.detail["classification"]["confusion"].tolist()
    )


def test_lesion_f1_key_metric_takes_binary_masks():
    predictions, targets, _ = _fixture()
    binary = [{**p, "masks": p["masks"][:, 0] > 0.5} for p in predictions]
    metric = LesionF1(num_classes=4)
    metric.update((binary, targets))
    assert metric.compute() == pytest.approx(ev.evaluate_lesions(predictions, targets, 4).scalars["mean_f1"])


def test_operating_point_thresholds_tables_but_not_ap_or_froc():
    """Low-scoring detections count for AP and FROC, but Tables 4–7 and the pixels see only those ≥ threshold."""
    predictions, targets, patients = _fixture()
    # a confident hit on image 0, and a low-scoring hit on a lesion of image 1 that no confident one found
    predictions = [*predictions]
    predictions[1] = pred([B, A], [1, 1], [0.2, 0.9])  # B (true, 0.2) and A (false, 0.9)
    everything = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients)
    operating = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients, score_threshold=0.5)
    above = [{k: v[p["scores"] >= 0.5] for k, v in p.items()} for p in predictions]
    only_above = ev.evaluate_lesions(above, targets, 4, patient_ids=patients)
    ranking = {"ap", "ap50", "ap75", "froc_cpm", *(f"froc_sensitivity_at_{r}" for r in RATES)}
    ranking |= {"best_mean_f1", "best_mean_f1_threshold"}  # the threshold curve also sees every prediction
    for name, value in operating.scalars.items():
        expected = everything if name in ranking else only_above
        assert value == pytest.approx(expected.scalars[name], nan_ok=True), name
    assert operating.scalars["mean_sensitivity"] < everything.scalars["mean_sensitivity"]  # the 0.2 hit is out
    assert operating.scalars["froc_cpm"] > only_above.scalars["froc_cpm"]  # ... but it still ranks
    assert operating.per_image == only_above.per_image
    key = LesionF1(num_classes=4, score_threshold=0.5)
    key.update((predictions, targets))
    assert key.compute() == pytest.approx(operating.scalars["mean_f1"])


def test_score_threshold_curve_moves_the_operating_point():
    """A confident hit, a missed lesion and a weak false positive: F1 is best just above the false positive."""
    C = box(6, 0, 9, 3)  # on no lesion
    predictions, targets = [pred([A, C], [1, 1], [0.9, 0.3])], [truth([A, B], [1, 1])]
    curve = ev.evaluate_lesions(predictions, targets, 4).detail["score_threshold_curve"]
    at = dict(zip(curve["thresholds"], curve["mean_f1"], strict=True))
    assert at[0.3] == pytest.approx(0.5)  # P 1/2, S 1/2
    assert at[0.35] == pytest.approx(2 / 3) and at[0.9] == pytest.approx(2 / 3)  # P 1, S 1/2
    assert at[0.95] == 0.0
    assert curve["best_threshold"] == 0.35 and curve["best_mean_f1"] == pytest.approx(2 / 3)
    # every point is the thresholded evaluation, on a fixture with several classes and images
    predictions, targets, patients = _fixture()
    full = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients)
    curve = full.detail["score_threshold_curve"]
    points = zip(curve["thresholds"], curve["mean_f1"], curve["localization_f1"], strict=True)
    for threshold, mean_f1, localization_f1 in points:
        cut = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients, score_threshold=threshold).scalars
        assert (mean_f1, localization_f1) == pytest.approx((cut["mean_f1"], cut["localization_f1"])), threshold
    assert full.scalars["best_mean_f1"] == max(curve["mean_f1"])


def _distributed_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        predictions, targets, patients = _fixture()
        metric = ev.LesionMetrics(num_classes=4)
        metric.update((predictions[rank::world_size], targets[rank::world_size], patients[rank::world_size]))
        scalars = metric.compute()
        torch.save({"scalars": scalars, "patients": metric.last_result.detail["metastasis"]["patients"]}, out_dir[rank])
    finally:
        dist.destroy_process_group()


def test_ignite_metric_gathers_every_rank():
    predictions, targets, patients = _fixture()
    expected = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [os.path.join(tmp, f"rank{r}.pt") for r in range(2)]
        torch.multiprocessing.spawn(
            _distributed_worker, args=(2, os.path.join(tmp, "init"), outputs), nprocs=2, join=True
        )
        results = [torch.load(o) for o in outputs]
    for result in results:  # every rank sees all images; rank order does not change any scalar here
        assert result["scalars"] == pytest.approx(expected.scalars, nan_ok=True)
        assert result["patients"] == expected.detail["metastasis"]["patients"]


def test_ignite_metric_without_patient_ids_counts_each_image_as_a_patient():
    # same position in two batches must not make two images one patient
    batches = [([pred([A], [1], [0.9])], [truth([A], [1])]), ([pred([], [], [])], [truth([A], [1])])]
    engine = Engine(lambda e, batch: batch)
    metric = ev.LesionMetrics(num_classes=4)
    metric.attach(engine, "lesions")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["metastasis_patient_recall"] == 0.5
    assert metric.last_result.detail["metastasis"]["patients"] == {"image_0": "TP", "image_1": "FN"}
    assert [row["index"] for row in metric.last_result.per_image] == [0, 1]


def test_per_image_rows_name_images_by_path_and_view():
    target = {**truth([A], [1], "P7"), "image_path": "scans/p7.dcm", "view": "posterior"}
    row = ev.evaluate_lesions([pred([A, B], [1, 1], [0.9, 0.8])], [target], 4).per_image[0]
    assert row == {
        "index": 0,
        "image": "scans/p7.dcm:posterior",
        "patient_id": "P7",
        "ground_truth": 1,
        "predicted": 2,
        "localization_tp": 1,
        "localization_fp": 1,
        "localization_fn": 0,
        "matched_same_class": 1,
        "malignant_ground_truth": 1,
        "malignant_predicted": 2,
        "metastasis": "TP",
        "pixel_dice": pytest.approx(2 * 16 / (2 * 16 + 16)),
    }


# --- the operating threshold chosen on validation ------------------------------------------------------------------


GRID = ev.SCORE_THRESHOLDS


def test_operating_threshold_is_the_highest_mean_f1():
    f1 = [0.1 * (1 - abs(t - 0.3)) for t in GRID]  # one peak, at 0.3
    choice = choose_operating_threshold(GRID, f1)
    assert choice.threshold == 0.3 and choice.mean_f1 == pytest.approx(0.1)
    assert choice.reference_threshold == 0.7 and choice.reference_mean_f1 == pytest.approx(0.1 * 0.6)
    assert choice.thresholds == GRID and choice.curve == pytest.approx(f1)
    # candidates in any order give the same choice, the curve ascending
    assert choose_operating_threshold(GRID[::-1], f1[::-1]) == choice


def test_operating_threshold_ties_go_to_the_nearest_to_the_reference_then_the_higher():
    plateau = [0.5 if 0.2 <= t <= 0.5 else 0.2 for t in GRID]  # equal best from 0.2 to 0.5
    assert choose_operating_threshold(GRID, plateau).threshold == 0.5  # nearest 0.7
    around = [0.5 if t in (0.65, 0.75) else 0.1 for t in GRID]  # equally near 0.7
    assert choose_operating_threshold(GRID, around).threshold == 0.75  # the higher: fewer detections
    # 2/4 and 1/2 from other counts may differ in the last bits: still a tie
    assert choose_operating_threshold([0.3, 0.7], [0.5, 0.5 - 1e-15]).threshold == 0.7
    assert choose_operating_threshold([0.3, 0.7], [0.5, 0.5 - 1e-6]).threshold == 0.3  # a real difference
    assert choose_operating_threshold(GRID, [0.4] * len(GRID), reference=0.5).threshold == 0.5


def test_operating_threshold_without_information_is_the_reference():
    """No detections (or none correct): every point is 0, validation cannot tell, so the thesis's 0.7 stays."""
    choice = choose_operating_threshold(GRID, [0.0] * len(GRID))
    assert (choice.threshold, choice.mean_f1, choice.reference_mean_f1) == (0.7, 0.0, 0.0)
    with pytest.raises(ValueError, match="reference threshold 0.7 is not among"):
        choose_operating_threshold([0.3, 0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="one mean F1 per threshold"):
        choose_operating_threshold([0.3, 0.7], [0.1])
    with pytest.raises(ValueError, match="one mean F1 per threshold"):
        choose_operating_threshold([], [])


def _operating_metric_run(batches, **kwargs):
    engine = Engine(lambda e, batch: batch)
    metric = OperatingPointF1(num_classes=4, **kwargs)
    metric.attach(engine, "val_operating_mean_f1")
    engine.run(batches, max_epochs=1)
    return metric, dict(engine.state.metrics)


def test_operating_point_metric_chooses_on_crafted_detections():
    """Two confident hits, one lesion found only at 0.45, weak false positives at 0.2: best from 0.25 to 0.45."""
    C, D = box(6, 0, 9, 3), box(0, 10, 3, 13)  # on no lesion
    batches = [
        ([pred([A, C], [1, 1], [0.9, 0.2])], [truth([A], [1])]),
        ([pred([B, D, A], [2, 2, 2], [0.8, 0.2, 0.45])], [truth([A, B], [2, 2])]),
    ]
    metric, metrics = _operating_metric_run(batches)
    assert set(metrics) == {"val_operating_mean_f1", "val_operating_threshold", "val_mean_f1"}  # flat, named
    # 0.25 … 0.45: 3 predictions, 3 hits of 3 lesions → F1 1; above 0.45 the 0.45 hit is lost (2/3 sensitivity)
    assert metrics["val_operating_threshold"] == 0.45  # of the tied 0.25 … 0.45, the nearest to 0.7
    assert metrics["val_operating_mean_f1"] == pytest.approx(1.0)
    # the reference is the old key metric: LesionF1 on the detections at or above 0.7
    old = LesionF1(num_classes=4, score_threshold=0.7)
    for batch in batches:
        old.update(batch)
    # at 0.7: class 1 F1 1 (support 1), class 2 F1 2/3 (support 2) → 7/9
    assert metrics["val_mean_f1"] == pytest.approx(old.compute()) == pytest.approx(7 / 9)
    choice = metric.last_choice
    assert choice.threshold == 0.45 and dict(zip(choice.thresholds, choice.curve, strict=True))[0.2] < 1.0


def test_operating_point_metric_without_detections_keeps_the_reference_and_resets():
    empty = [([pred([], [], [])], [truth([A], [1])]), ([pred([], [], [])], [truth([], [])])]
    metric, metrics = _operating_metric_run(empty)
    assert metrics == {"val_operating_mean_f1": 0.0, "val_operating_threshold": 0.7, "val_mean_f1": 0.0}
    # a threshold grid without the reference gets it added; a second run starts from nothing
    engine = Engine(lambda e, batch: batch)
    metric = OperatingPointF1(num_classes=4, thresholds=(0.3, 0.5), threshold_name="t", reference_name="at_ref")
    metric.attach(engine, "f1")
    engine.run([([pred([A], [1], [0.4])], [truth([A], [1])])], max_epochs=1)
    assert metric.thresholds == (0.3, 0.5, 0.7) and engine.state.metrics == {"f1": 1.0, "t": 0.3, "at_ref": 0.0}
    engine.run(empty, max_epochs=1)
    assert engine.state.metrics == {"f1": 0.0, "t": 0.7, "at_ref": 0.0}


def test_a_record_moved_to_another_threshold_equals_one_made_there():
    predictions, targets, patients = _fixture()
    predictions = [*predictions, pred([A, iou_049(), B], [1, 2, 3], [0.9, 0.6, 0.3])]
    targets = [*targets, truth([GT10, B], [1, 3])]
    everything = image_records(predictions, targets, patient_ids=[*patients, "P4"], score_threshold=0.7)
    for threshold in (0.0, 0.35, 0.5, 0.95):
        made = image_records(predictions, targets, patient_ids=[*patients, "P4"], score_threshold=threshold)
        moved = [r.with_score_threshold(threshold) for r in everything]
        for a, b in zip(moved, made, strict=True):
            assert (a.pixel_tp, a.pixel_fp, a.pixel_fn, a.pixel_class) == (
                b.pixel_tp,
                b.pixel_fp,
                b.pixel_fn,
                b.pixel_class,
            )
            assert a.score_threshold == threshold and a.pairs == b.pairs


def test_evaluation_at_an_operating_threshold_beside_the_protocol():
    """``operating_`` scalars equal a plain evaluation at that threshold; the plain ones stay at the protocol."""
    predictions, targets, patients = _fixture()
    both = ev.evaluate_lesions(
        predictions, targets, 4, patient_ids=patients, score_threshold=0.7, operating_threshold=0.35
    )
    protocol = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients, score_threshold=0.7)
    at = ev.evaluate_lesions(predictions, targets, 4, patient_ids=patients, score_threshold=0.35)
    thresholded, _ = ev.thresholded_metrics(image_records(predictions, targets, 0.5, patients, 0.7), 4)
    assert set(both.scalars) == set(protocol.scalars) | {f"operating_{k}" for k in thresholded} | {
        "operating_threshold"
    }
    assert both.scalars["operating_threshold"] == 0.35
    for name, value in protocol.scalars.items():
        assert both.scalars[name] == pytest.approx(value, nan_ok=True), name
    for name in thresholded:
        assert both.scalars[f"operating_{name}"] == pytest.approx(at.scalars[name]), name
    # the false positive at 0.4 counts at 0.35 only
    assert both.scalars["operating_localization_precision"] < both.scalars["localization_precision"]
    assert both.per_image == at.per_image  # rows of the model as used
    assert both.detail["operating_point"]["threshold"] == 0.35
    assert both.detail["operating_point"]["segmentation"]["mean_f1"] == at.detail["segmentation"]["mean_f1"]

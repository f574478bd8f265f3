"""Study label maps (what MONAI Label shows and gets back) and the training datalist made from them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.label_store import check_study_id, datalist_from_label_maps
from malignet_bundle.data.nm_dicom import read_nm_views
from malignet_bundle.outputs.label_map import label_map_instances, read_label_map, study_label_map, write_label_map
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction


def _view(name: str, index: int, masks: list[np.ndarray], labels: list[int], scores: list[float]) -> ViewPrediction:
    return ViewPrediction(
        view=name,
        frame_index=index,
        image=np.zeros((12, 8), np.float32),
        masks=np.stack(masks) if masks else np.zeros((0, 12, 8), bool),
        labels=np.asarray(labels, np.int64),
        scores=np.asarray(scores, np.float32),
        chest_box=(0.0, 0.0, 8.0, 12.0),
    )


def _box(top: int, left: int, size: int = 3) -> np.ndarray:
    mask = np.zeros((12, 8), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_label_map_paints_views_into_their_frames_best_score_on_top(tmp_path):
    low, high = _box(2, 2), _box(3, 3)  # overlapping
    prediction = StudyPrediction(
        "S1",
        [],
        [],
        (2.0, 1.5),
        [_view("posterior", 1, [low, high], [3, 1], [0.6, 0.9]), _view("anterior", 0, [_box(8, 0)], [2], [0.8])],
    )
    label_map = study_label_map(prediction, frames=2)
    assert label_map.shape == (2, 12, 8)
    assert label_map[1, 3, 3] == 1  # the 0.9 lesion wins where they overlap
    assert label_map[1, 2, 2] == 3
    assert label_map[0, 9, 1] == 2 and label_map[0, 3, 3] == 0
    path = write_label_map(label_map, prediction.spacing, tmp_path / "map.nii.gz")
    assert np.array_equal(read_label_map(path, (2, 12, 8)), label_map)
    with pytest.raises(ValueError, match=r"map\.nii\.gz: label map shape \(2, 12, 8\) does not match"):
        read_label_map(path, (2, 8, 12))
    with pytest.raises(ValueError, match="beyond the 1 frames"):
        study_label_map(prediction, frames=1)


def test_instances_are_connected_regions_per_class():
    frame = np.zeros((10, 10), np.int64)
    frame[0:2, 0:2] = 1
    frame[2, 2] = 1  # touches the first region diagonally: same lesion
    frame[6:8, 6:8] = 1
    frame[0:2, 7:9] = 4
    masks, labels = label_map_instances(frame)
    assert sorted(labels.tolist()) == [1, 1, 4]
    assert sorted(int(m.sum()) for m in masks) == [4, 4, 5]
    assert np.array_equal(np.logical_or.reduce(masks), frame > 0)
    empty_masks, empty_labels = label_map_instances(np.zeros((4, 4), np.int64))
    assert empty_masks.shape == (0, 4, 4) and empty_labels.shape == (0,)


def _ground_truth_map(item_paths: dict[str, str], image: str, class_map) -> np.ndarray:
    nm = read_nm_views(image)
    label_map = np.zeros((len(nm.frames), *nm.frames[0].shape), np.uint8)
    for index, view in enumerate(nm.views):
        annotation = load_annotation(item_paths[view], nm.frames[index].shape, view=view, class_map=class_map)
        for mask, name in zip(annotation.masks, annotation.class_names, strict=True):
            label_map[index][mask] = class_map.label(name)
    return label_map


def test_datalist_from_label_maps_round_trips_the_annotations(synthetic_dataset, class_map, tmp_path, caplog):
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    studies: dict[str, dict[str, str]] = {}
    for item in datalist["labeled"]:
        studies.setdefault(str(synthetic_dataset / item["image"]), {})[item["view"]] = str(
            synthetic_dataset / item["label"]
        )
    labeled, expected = [], {}
    for k, (image, labels) in enumerate(sorted(studies.items())):
        label_map = _ground_truth_map(labels, image, class_map)
        expected[f"S{k}"] = label_map
        path = write_label_map(label_map, (2.26, 2.26), tmp_path / f"S{k}.nii.gz")
        labeled.append((f"S{k}", image, path))
    assert any(m.any() for m in expected.values())  # the round trip below carries real lesions
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom at all" * 8)
    unlabeled_image = str(synthetic_dataset / datalist["unlabeled"][0]["image"])
    before = hashlib.sha256(open(unlabeled_image, "rb").read()).hexdigest()
    with caplog.at_level(logging.WARNING):
        out = datalist_from_label_maps(
            labeled, [("U0", unlabeled_image), ("BAD", broken)], tmp_path / "work", class_map
        )
    assert "BAD" in caplog.text and "broken.dcm" in caplog.text  # left out, with the file and the reason
    assert load_datalist(tmp_path / "work" / "datalist.json") == out
    assert [i["image"] for i in out["unlabeled"]] == [unlabeled_image] * 2  # both views of the good one
    assert hashlib.sha256(open(unlabeled_image, "rb").read()).hexdigest() == before
    n = len(labeled)
    assert (
        len(out["validation"]) == 2 * max(1, round(0.2 * n)) and len(out["labeled"]) + len(out["validation"]) == 2 * n
    )
    # every view's instances, painted back by class, give the label map the annotator saved
    for item in out["labeled"] + out["validation"]:
        study = next(s for s, image, _ in labeled if image == item["image"])
        nm = read_nm_views(item["image"])
        index = nm.views.index(item["view"])
        annotation = load_annotation(item["label"], nm.frames[index].shape, class_map=class_map)
        painted = np.zeros(nm.frames[index].shape, np.uint8)
        for mask, name in zip(annotation.masks, annotation.class_names, strict=True):
            painted[mask] = class_map.label(name)
        assert np.array_equal(painted, expected[study][index])
    with pytest.raises(ValueError, match="no annotated study"):
        datalist_from_label_maps([], [], tmp_path / "empty", class_map)


def test_validation_studies_are_ones_with_lesions_when_there_are_enough(synthetic_dataset, class_map, tmp_path, caplog):
    image = str(synthetic_dataset / load_datalist(synthetic_dataset / "datalist.json")["labeled"][0]["image"])
    nm = read_nm_views(image)
    shape = (len(nm.frames), *nm.frames[0].shape)

    def study(study_id: str, lesion: bool) -> tuple[str, str, Path]:
        label_map = np.zeros(shape, np.uint8)
        if lesion:
            label_map[0, 40:46, 30:36] = class_map.malignant_label
        return study_id, image, write_label_map(label_map, (2.26, 2.26), tmp_path / f"{study_id}.nii.gz")

    def study_ids(items: list[dict]) -> set[str]:  # the converted annotations are <study id>_<view>.nii.gz
        return {Path(item["label"]).name.split("_")[0] for item in items}

    # the last study in id order has no lesions: the last one that has any is held out instead
    labeled = [study("S0", True), study("S1", True), study("S2", True), study("S3", False)]
    with caplog.at_level(logging.WARNING):
        out = datalist_from_label_maps(labeled, [], tmp_path / "a", class_map, validation_fraction=0.25)
    assert study_ids(out["validation"]) == {"S2"} and "no lesions" not in caplog.text
    assert study_ids(out["labeled"]) == {"S0", "S1", "S3"}
    # a single study with lesions stays in training; the lesion-free validation is named in a warning
    caplog.clear()
    labeled = [study("S0", True), study("S1", False), study("S2", False)]
    with caplog.at_level(logging.WARNING):
        out = datalist_from_label_maps(labeled, [], tmp_path / "b", class_map, validation_fraction=0.25)
    assert study_ids(out["validation"]) == {"S2"}
    assert "validation studies have no lesions (1 of 3" in caplog.text


# ids that would name a file outside the work folder, or no plain file at all
UNSAFE_IDS = [
    "../x",
    "../../etc/passwd",
    "a/b",
    "..",
    ".",
    "/etc/passwd",
    "a\\b",
    "..\\x",
    ".hidden",
    "C:x",
    "a\x00b",
    "",
]


@pytest.mark.parametrize("study_id", UNSAFE_IDS)
def test_label_store_refuses_unsafe_study_ids_before_writing(synthetic_dataset, class_map, tmp_path, study_id):
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    item = datalist["labeled"][0]
    image = str(synthetic_dataset / item["image"])
    nm = read_nm_views(image)
    label = write_label_map(np.zeros((len(nm.frames), *nm.frames[0].shape), np.uint8), (2.0, 2.0), tmp_path / "m.nii")
    work = tmp_path / "box" / "work"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="study id"):
        datalist_from_label_maps([(study_id, image, label)], [], work, class_map)
    with pytest.raises(ValueError, match="study id"):  # an unlabeled study's id is checked as well
        datalist_from_label_maps([("S0", image, label)], [(study_id, image)], work, class_map)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_label_store_accepts_plain_ids_and_writes_only_in_its_work_folder(synthetic_dataset, class_map, tmp_path):
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    image = str(synthetic_dataset / datalist["labeled"][0]["image"])
    nm = read_nm_views(image)
    label = write_label_map(np.zeros((len(nm.frames), *nm.frames[0].shape), np.uint8), (2.0, 2.0), tmp_path / "m.nii")
    assert check_study_id("P 0001.a-b_c") == "P 0001.a-b_c"
    out = datalist_from_label_maps([("P 0001.a-b_c", image, label)], [], tmp_path / "work", class_map)
    written = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "work").rglob("*") if p.is_file()}
    assert {f"work/labels/P 0001.a-b_c_{view}.nii.gz" for view in nm.views} <= written
    assert all(Path(i["label"]).parent == (tmp_path / "work" / "labels").resolve() for i in out["validation"])

from __future__ import annotations

import json

import numpy as np
import pytest

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.annotations import (
    AnnotationError,
    coco_document,
    load_annotation,
    to_coco_image,
    to_labelme,
    write_instance_label_image,
)
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.synthesize import synthesize_study


@pytest.fixture(scope="module")
def study():
    for i in range(50):
        s = synthesize_study([5, i], "A")
        names = s.class_names["anterior"]
        if len(names) >= 3 and len(set(names)) >= 2:
            return s
    raise AssertionError("no study with several lesion classes")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_coco_rle_round_trip_is_exact(study, class_map, tmp_path):
    masks, names = study.masks["anterior"], study.class_names["anterior"]
    image, anns = to_coco_image(
        1, "x.dcm", "anterior", masks.shape[1:], masks, names, class_map, study.chest_box["anterior"]
    )
    write_json_atomic(coco_document([image], anns, class_map), tmp_path / "c.json")
    ann = load_annotation(tmp_path / "c.json", masks.shape[1:], view="anterior", class_map=class_map)
    np.testing.assert_array_equal(ann.masks, masks)
    assert ann.class_names == names
    assert ann.chest_box == pytest.approx(study.chest_box["anterior"], abs=0.01)


def test_coco_polygons_and_labelme_round_trip(study, class_map, tmp_path):
    masks, names = study.masks["anterior"], study.class_names["anterior"]
    labelme = to_labelme("x.dcm", masks.shape[1:], masks, names)
    write_json_atomic(labelme, tmp_path / "l.json")
    ann = load_annotation(tmp_path / "l.json", masks.shape[1:], class_map=class_map)
    assert ann.class_names == names
    assert min(_iou(a, b) for a, b in zip(ann.masks, masks, strict=True)) > 0.8
    # the same polygons as COCO segmentation give the same masks as through LabelMe
    image, anns = to_coco_image(1, "x.dcm", "anterior", masks.shape[1:], masks, names, class_map, None)
    by_group: dict[int, list] = {}
    for shape in labelme["shapes"]:
        by_group.setdefault(shape["group_id"], []).append([v for p in shape["points"] for v in p])
    for a, polys in zip(anns, by_group.values(), strict=True):
        a["segmentation"] = polys
    write_json_atomic(coco_document([image], anns, class_map), tmp_path / "p.json")
    coco = load_annotation(tmp_path / "p.json", masks.shape[1:], view="anterior", class_map=class_map)
    np.testing.assert_array_equal(coco.masks, ann.masks)


@pytest.mark.parametrize("suffix", [".png", ".nii.gz", ".nii"])
def test_instance_label_images_round_trip(study, class_map, tmp_path, suffix):
    masks, names = study.masks["anterior"], study.class_names["anterior"]
    keep = [k for k in range(len(masks)) if not (masks[k] & masks[np.arange(len(masks)) != k].any(0)).any()]
    masks, names = masks[keep], [names[k] for k in keep]
    path = tmp_path / f"inst{suffix}"
    write_instance_label_image(path, masks, names, spacing_mm=(2.26, 2.26))
    ann = load_annotation(path, masks.shape[1:], class_map=class_map)
    np.testing.assert_array_equal(ann.masks, masks)
    assert ann.class_names == names


def test_other_class_map_by_config_alone(tmp_path):
    """A two-class map in metadata.json is all a user changes to import their own class names."""
    meta = {
        "network_data_format": {
            "outputs": {"pred": {"channel_def": {"0": "background", "1": "lesion", "2": "fracture"}}}
        },
        "class_aliases": {"met": "lesion"},
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    cmap = ClassMap.from_metadata(tmp_path / "metadata.json")
    assert cmap.num_classes == 2 and cmap.label("Fracture") == 2 and cmap.label("MET") == 1
    mask = np.zeros((1, 20, 10), bool)
    mask[0, 5:9, 2:6] = True
    write_instance_label_image(tmp_path / "x.png", mask, ["met"])
    ann = load_annotation(tmp_path / "x.png", (20, 10), class_map=cmap)
    assert ann.labels(cmap).tolist() == [1]
    default = ClassMap.from_metadata(__import__("tests.conftest").conftest.ROOT / "configs" / "metadata.json")
    with pytest.raises(AnnotationError, match="unknown class names"):
        load_annotation(tmp_path / "x.png", (20, 10), class_map=default)


def test_annotation_errors_name_file_and_reason(tmp_path, class_map):
    mask = np.zeros((1, 20, 10), bool)
    mask[0, 5:9, 2:6] = True
    write_json_atomic(to_labelme("x.dcm", (20, 10), mask, ["malignant"]), tmp_path / "l.json")
    with pytest.raises(AnnotationError, match="does not match the image size") as info:
        load_annotation(tmp_path / "l.json", (30, 10))
    assert "l.json" in str(info.value)
    doc = to_labelme("x.dcm", (20, 10), mask, ["malignant"])
    doc["shapes"][0]["points"][0] = [40.0, 3.0]
    write_json_atomic(doc, tmp_path / "out.json")
    with pytest.raises(AnnotationError, match="polygon outside"):
        load_annotation(tmp_path / "out.json", (20, 10))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_annotation(tmp_path / "bad.json", (20, 10))
    with pytest.raises(AnnotationError, match="file not found"):
        load_annotation(tmp_path / "none.json", (20, 10))


def _load_capped(path, shape) -> str:
    """``load_annotation`` in a subprocess with 4 GB of address space; returns its error message or "loaded".

    Before the coordinate check, pycocotools allocated without bound on a NaN or infinite polygon (the process
    was killed); a regression must fail this test, not exhaust the machine.
    """
    import subprocess
    import sys

    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
        "from malignet_bundle.data.annotations import AnnotationError, load_annotation\n"
        "try:\n    load_annotation(sys.argv[1], (int(sys.argv[2]), int(sys.argv[3]))); print('loaded')\n"
        "except AnnotationError as e:\n    print(e)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path), *map(str, shape)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_non_finite_and_malformed_geometry_is_refused_before_pycocotools(tmp_path, class_map):
    mask = np.zeros((1, 40, 20), bool)
    mask[0, 5:15, 4:12] = True
    labelme = to_labelme("x.dcm", (40, 20), mask, ["malignant"])
    image, anns = to_coco_image(1, "x.dcm", "anterior", (40, 20), mask, ["malignant"], class_map, (2, 2, 18, 30))

    def coco(segmentation=None, chest_bbox=None, height=None) -> dict:
        im = {**image, **({"chest_bbox": chest_bbox} if chest_bbox else {}), **({"height": height} if height else {})}
        ann = {**anns[0], **({"segmentation": segmentation} if segmentation is not None else {})}
        return coco_document([im], [ann], class_map)

    nan_points = json.loads(json.dumps(labelme))
    nan_points["shapes"][0]["points"][0] = [float("nan"), 3.0]
    inf_points = json.loads(json.dumps(labelme))
    inf_points["shapes"][0]["points"][1] = [4.0, float("-inf")]
    null_points = json.loads(json.dumps(labelme))
    null_points["shapes"][0]["points"][2] = [None, 3.0]
    triple = json.loads(json.dumps(labelme))
    triple["shapes"][0]["points"][2] = [1.0, 2.0, 3.0]
    chest_nan = json.loads(json.dumps(labelme))
    chest_nan["shapes"].append({"label": "chest", "shape_type": "rectangle", "points": [[1, 1], [float("nan"), 9]]})
    cases = {
        "labelme_nan.json": (nan_points, "shape 0: 1 missing (null), NaN or infinite coordinate(s)"),
        "labelme_inf.json": (inf_points, "NaN or infinite coordinate(s)"),
        "labelme_null.json": (null_points, "shape 0: 1 missing (null), NaN or infinite coordinate(s)"),
        "labelme_triple.json": (triple, "shape 0: points must be [x, y] pairs"),
        "labelme_chest_nan.json": (chest_nan, "chest rectangle): 1 missing (null), NaN or infinite"),
        "coco_inf.json": (
            coco([[1.0, 1.0, float("inf"), 5.0, 9.0, 9.0]]),
            "annotation 1: 1 missing (null), NaN or infinite",
        ),
        "coco_odd.json": (coco([[1.0, 1.0, 5.0, 5.0, 9.0]]), "odd number of coordinates (5)"),
        "coco_rle_sum.json": (coco({"size": [40, 20], "counts": [5, 10]}), "summing to 40x20=800"),
        "coco_rle_negative.json": (coco({"size": [40, 20], "counts": [-5, 805]}), "non-negative integers"),
        "coco_rle_garbage.json": (coco({"size": [40, 20], "counts": "zzzz!!"}), "RLE cannot be decoded"),
        "coco_chest_nan.json": (
            coco(chest_bbox=[1.0, float("nan"), 5.0, 5.0]),
            "chest_bbox: 1 missing (null), NaN or infinite",
        ),
        "coco_chest_outside.json": (coco(chest_bbox=[30.0, 50.0, 5.0, 5.0]), "is empty or outside the 20x40 image"),
        "coco_height.json": (coco(height="forty"), "is not a pair of integers"),
    }
    for name, (doc, reason) in cases.items():
        (tmp_path / name).write_text(json.dumps(doc))  # json writes NaN/Infinity, as Python tools do
        message = _load_capped(tmp_path / name, (40, 20))
        assert message.startswith(f"{tmp_path / name}: ") and reason in message, (name, message)


def test_load_annotationd_refuses_an_empty_mask_instead_of_dropping_it(tmp_path, class_map):
    import torch
    from monai.data import MetaTensor

    from malignet_bundle.transforms.io import LoadAnnotationd

    mask = np.zeros((1, 40, 20), bool)
    mask[0, 5:15, 4:12] = True
    image, anns = to_coco_image(1, "x.dcm", "anterior", (40, 20), mask, ["malignant"], class_map, None)
    empty = {**anns[0], "id": 2, "segmentation": {"size": [40, 20], "counts": [800]}}
    write_json_atomic(coco_document([image], [anns[0], empty], class_map), tmp_path / "c.json")
    item = {"image": MetaTensor(torch.zeros(1, 40, 20)), "label": str(tmp_path / "c.json"), "view": "anterior"}
    with pytest.raises(AnnotationError, match="annotation 2: empty mask") as info:
        LoadAnnotationd("label", class_map=class_map)(item)
    assert "c.json" in str(info.value)
    lenient = LoadAnnotationd("label", class_map=class_map, strict=False)(item)
    assert lenient["masks"].shape == (1, 40, 20)

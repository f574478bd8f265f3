from __future__ import annotations

import json

import numpy as np
import pytest

from malignet_bundle.data.annotations import (
    AnnotationError,
    coco_document,
    load_annotation,
    to_coco_image,
    to_labelme,
    write_instance_label_image,
    write_json_atomic,
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

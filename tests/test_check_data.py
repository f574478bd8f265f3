from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pydicom
import pytest

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.annotations import to_labelme
from malignet_bundle.data.check import checked_datalist
from malignet_bundle.data.datalist import DatalistError, load_datalist

from .conftest import run_script


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_check_reports_every_problem_in_one_pass_and_touches_nothing(synthetic_dataset, tmp_path):
    ds_dir = tmp_path / "broken"
    shutil.copytree(synthetic_dataset, ds_dir)
    datalist = json.loads((ds_dir / "datalist.json").read_text())
    labeled = datalist["labeled"]  # 4 studies × 2 views: SYN00001..SYN00004

    # 1. missing image file
    labeled[0]["image"] = "studies/DOES_NOT_EXIST.dcm"
    # 2. unreadable DICOM
    (ds_dir / "studies" / "garbage.dcm").write_bytes(b"\x00garbage" * 50)
    labeled[1]["image"] = "studies/garbage.dcm"
    # 3. non-NM DICOM
    ct = pydicom.dcmread(ds_dir / "studies" / "SYN00002.dcm")
    ct.Modality = "CT"
    ct.save_as(ds_dir / "studies" / "ct.dcm")
    labeled[2]["image"] = "studies/ct.dcm"
    # 4. annotation size mismatch; 5. unknown class name; 6. empty mask (all in COCO files)
    coco = json.loads((ds_dir / "labels" / "SYN00003.json").read_text())
    coco["images"][0]["height"] = 512
    (ds_dir / "labels" / "SYN00003.json").write_text(json.dumps(coco))
    coco = json.loads((ds_dir / "labels" / "SYN00004.json").read_text())
    coco["categories"][0]["name"] = "tumour of unknown kind"
    # a lesion of the renamed class, whether or not the generator drew one for this study
    coco["annotations"].append(
        {
            "id": 997,
            "image_id": 1,
            "category_id": coco["categories"][0]["id"],
            "iscrowd": 0,
            "segmentation": [[100.0, 500.0, 110.0, 500.0, 110.0, 510.0, 100.0, 510.0]],
        }
    )
    coco["annotations"].append(
        {
            "id": 999,
            "image_id": 2,
            "category_id": 2,
            "iscrowd": 0,
            "segmentation": [[300.0, 10.0, 301.0, 10.0, 301.0, 11.0]],
        }
    )
    (ds_dir / "labels" / "SYN00004.json").write_text(json.dumps(coco))
    empty_coco = json.loads((ds_dir / "labels" / "SYN00005.json").read_text())
    # 7. polygon outside the image, in a LabelMe file for a validation view
    mask = np.zeros((1, 1024, 256), bool)
    mask[0, 100:110, 100:110] = True
    doc = to_labelme("x.dcm", (1024, 256), mask, ["malignant"])
    doc["shapes"][0]["points"].append([400.0, 105.0])
    write_json_atomic(doc, ds_dir / "labels" / "outside.json")
    datalist["validation"][0]["label"] = "labels/outside.json"
    # empty mask: an RLE of zeros in the test study's file
    empty_coco["annotations"].append(
        {
            "id": 998,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": {"size": [1024, 256], "counts": [1024 * 256]},
        }
    )
    (ds_dir / "labels" / "SYN00006.json").write_text(json.dumps(empty_coco))
    test_item = datalist["test"][0]
    test_item["label"] = "labels/SYN00006.json"
    test_item["image"] = "studies/SYN00005.dcm"
    # 8. the same patient in two splits
    datalist["unlabeled"][0]["patient_id"] = labeled[6]["patient_id"]
    (ds_dir / "datalist.json").write_text(json.dumps(datalist))

    before = _digest(ds_dir)
    result = run_script("check_data", "--datalist", str(ds_dir / "datalist.json"), "--dataset_dir", str(ds_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    expected = [
        ("DOES_NOT_EXIST.dcm", "file not found"),
        ("garbage.dcm", "not a readable DICOM"),
        ("ct.dcm", "modality is CT, expected NM"),
        ("SYN00003.json", "does not match the image size"),
        ("SYN00004.json", "unknown class names ['tumour of unknown kind']"),
        ("outside.json", "polygon outside the 256x1024 image"),
        ("SYN00006.json", "empty mask"),
        ("datalist.json", f"patient {labeled[6]['patient_id']} appears in several splits"),
    ]
    for file_name, reason in expected:
        assert any(file_name in line and reason in line and line.startswith("ERROR") for line in lines), (
            file_name,
            reason,
            result.stdout,
        )
    assert _digest(ds_dir) == before


def test_check_passes_clean_dataset_and_rejects_missing_datalist(synthetic_dataset, tmp_path):
    ok = run_script(
        "check_data", "--datalist", str(synthetic_dataset / "datalist.json"), "--dataset_dir", str(synthetic_dataset)
    )
    assert ok.returncode == 0 and "0 errors, 0 warnings" in ok.stdout, ok.stdout + ok.stderr
    missing = run_script("check_data", "--datalist", str(tmp_path / "nope.json"), "--dataset_dir", str(tmp_path))
    assert missing.returncode == 1 and "nope.json: datalist not found" in missing.stdout
    (tmp_path / "empty.json").write_text(json.dumps({"labeled": [], "unlabeled": []}))
    empty = run_script("check_data", "--datalist", str(tmp_path / "empty.json"), "--dataset_dir", str(tmp_path))
    assert empty.returncode == 1 and "'labeled' split is empty" in empty.stdout


def test_check_warns_about_synthetic_data_of_an_older_generator(synthetic_dataset, tmp_path):
    # the same files, seen from a folder whose dataset.json says another generator made them
    old = tmp_path / "old"
    old.mkdir()
    for entry in synthetic_dataset.iterdir():
        if entry.name != "dataset.json":
            (old / entry.name).symlink_to(entry)
    summary = json.loads((synthetic_dataset / "dataset.json").read_text())
    write_json_atomic({**summary, "generator_version": 1}, old / "dataset.json")
    checked = run_script("check_data", "--datalist", str(old / "datalist.json"), "--dataset_dir", str(old))
    assert checked.returncode == 0 and "0 errors, 1 warnings" in checked.stdout, checked.stdout + checked.stderr
    assert f"{old / 'dataset.json'}: synthetic data of generator version 1, the current one is 2" in checked.stdout
    # another tool's dataset.json (a Medical Segmentation Decathlon one, say) is none of the check's business
    write_json_atomic({"name": "BoneScan", "labels": {"0": "background"}}, old / "dataset.json")
    other = run_script("check_data", "--datalist", str(old / "datalist.json"), "--dataset_dir", str(old))
    assert other.returncode == 0 and "0 errors, 0 warnings" in other.stdout, other.stdout


def test_contact_sheet_script(synthetic_dataset, tmp_path):
    from PIL import Image

    out = tmp_path / "sheet.png"
    run_script(
        "contact_sheet",
        "--dataset_dir",
        str(synthetic_dataset),
        "--studies",
        "2",
        "--variety",
        "--out",
        str(out),
        check=True,
    )
    with Image.open(out) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] > 500
    # the chest box colour is drawn
    assert ((rgb[..., 0] == 128) & (rgb[..., 1] == 0) & (rgb[..., 2] == 128)).sum() > 50


def test_checked_datalist_for_training_lets_unreadable_unlabeled_scans_pass_as_warnings(
    synthetic_dataset, tmp_path, class_map, caplog
):
    """Training skips an unreadable unlabeled scan (drop_unreadable), so its header check only warns about it."""
    clean = checked_datalist(synthetic_dataset / "datalist.json", synthetic_dataset, class_map)
    assert clean == load_datalist(synthetic_dataset / "datalist.json")
    ds_dir = tmp_path / "data"
    shutil.copytree(synthetic_dataset, ds_dir)
    (ds_dir / "studies" / "corrupt.dcm").write_bytes(b"\x00not dicom" * 64)
    datalist = json.loads((ds_dir / "datalist.json").read_text())
    datalist["unlabeled"].append({"image": "studies/corrupt.dcm", "view": "anterior", "patient_id": "BROKEN"})
    write_json_atomic(datalist, ds_dir / "datalist.json")
    with caplog.at_level("WARNING"):
        kept = checked_datalist(ds_dir / "datalist.json", ds_dir, class_map)
    assert kept["unlabeled"][-1]["patient_id"] == "BROKEN"
    assert "corrupt.dcm: not a readable DICOM file" in caplog.text
    # the same file among the labeled scans is an error, and the message names it with its reason
    datalist["labeled"].append({**datalist["unlabeled"].pop(), "label": "labels/SYN00001.json"})
    write_json_atomic(datalist, ds_dir / "datalist.json")
    before = _digest(ds_dir)
    with pytest.raises(DatalistError, match=r"corrupt\.dcm: not a readable DICOM file") as info:
        checked_datalist(ds_dir / "datalist.json", ds_dir, class_map)
    assert [p for p, _ in info.value.problems] == [str(ds_dir / "studies" / "corrupt.dcm")]
    assert _digest(ds_dir) == before


def _check_data(capsys, *args: object) -> tuple[int, list[str]]:
    """``scripts/check_data.py`` in this process (its imports cost more than the check): exit code, lines."""
    from scripts.check_data import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().out.splitlines()


def test_inference_mode_reports_colliding_files_and_counts_the_view_fallback(colliding_folder, capsys):
    """A folder for inference, no labels: both files named, the reason given, fallback views counted."""
    before = _digest(colliding_folder)
    code, lines = _check_data(capsys, "--inference", colliding_folder)
    assert code == 1, lines
    (error,) = [line for line in lines if line.startswith("ERROR")]
    assert "anterior_copy.dcm" in error and "posterior_copy.dcm" in error and "both hold the anterior view" in error
    assert "frame-order fallback" in error
    assert lines[-1].endswith("1 errors, 2 warnings"), lines[-1]
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 2 and all("assumed ['anterior'] by frame order" in line for line in warnings)
    assert _digest(colliding_folder) == before


def test_inference_mode_accepts_an_unlabeled_split(synthetic_dataset, capsys):
    code, lines = _check_data(capsys, "--inference", synthetic_dataset / "datalist.json", "--split", "unlabeled")
    assert code == 0, lines
    assert lines[-1] == "checked {'studies': 2, 'files': 2}; 0 errors, 0 warnings"
    code, lines = _check_data(capsys, "--inference", synthetic_dataset / "datalist.json", "--split", "nonexistent")
    assert code == 1 and "nonexistent" in lines[0]

"""Every bad input named: each one refused with its file and reason by the data check, training and inference.

One small synthetic dataset gets a bad twin of each kind (real DICOM written with pydicom, real annotation
files); each test asserts the file name and the reason, and that no input file changed (sha256).

Processes that could meet an unchecked NaN polygon run with a capped address space: before the check,
pycocotools allocated without bound on such input, and a regression should fail the test, not the machine.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from malignet_bundle.atomic_io import sha256_file, write_json_atomic
from malignet_bundle.data.annotations import load_annotation, to_labelme
from malignet_bundle.data.nm_dicom import write_compressed_copy
from malignet_bundle.data.synthesize import write_dataset

from .conftest import ROOT

MEMORY_CAP = 12 << 30  # torch + MONAI need ~5 GB of address space; a runaway allocation stops here


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, preexec_fn=_cap_memory, timeout=900
    )


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- bad DICOM files


def _new_instance(ds: pydicom.Dataset) -> None:
    """A distinct study and instance, so that only the intended flaw (not a duplicate UID) is found."""
    ds.StudyInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()


def _rgb(ds: pydicom.Dataset) -> None:
    grey = np.clip(ds.pixel_array, 0, 255).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()


def _bits32(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.astype(np.uint32)
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelData = pixels.tobytes()


def _three_frames(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array
    ds.PixelData = np.concatenate([pixels, pixels[:1]]).tobytes()
    ds.NumberOfFrames = 3
    ds.DetectorVector = [1, 2, 1]


def _short_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]


def _lying_header(ds: pydicom.Dataset) -> None:
    # 1 MiB of pixel data under a header that claims one 12000x12000 frame (288 MB to decode)
    ds.Rows = ds.Columns = 12000
    ds.NumberOfFrames = 1
    ds.DetectorVector = [1]


def _size(rows: int, cols: int):
    def resize(ds: pydicom.Dataset) -> None:
        pixels = ds.pixel_array[:, :rows, :cols]
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    return resize


def _all_zero(ds: pydicom.Dataset) -> None:
    ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()


def _two_anterior(ds: pydicom.Dataset) -> None:
    ds.DetectorInformationSequence[1].ViewCodeSequence = ds.DetectorInformationSequence[0].ViewCodeSequence


def _ct(ds: pydicom.Dataset) -> None:
    ds.Modality = "CT"


# file name → (what is wrong with it, a reason the error must give)
DICOM_CASES = {
    "rgb.dcm": (_rgb, "3 samples per pixel"),
    "bits32.dcm": (_bits32, "BitsAllocated 32"),
    "three_frames.dcm": (_three_frames, "3 frames"),
    "short_pixels.dcm": (_short_pixels, "2 frame(s) of 1024x256 x 1 sample(s) x 2 byte(s) = 1048576 bytes"),
    "lying_header.dcm": (_lying_header, "12000x12000"),
    "frame_100x100.dcm": (_size(100, 100), "100x100 pixels (rows x columns) is too small for a whole-body view"),
    "frame_10x10.dcm": (_size(10, 10), "10x10 pixels (rows x columns) is too small"),
    "all_zero.dcm": (_all_zero, "is constant (every pixel 0)"),
    "two_anterior.dcm": (_two_anterior, "frames 1 and 2 carry the same view code, anterior"),
    "ct.dcm": (_ct, "modality is CT"),
}
# refused by the pixels, not the header: not in the header-level training check
PIXEL_LEVEL = {"all_zero.dcm"}
# annotation file → reason; each annotates the anterior view of its own study
ANNOTATION_CASES = {
    "nan_labelme.json": "NaN or infinite coordinate",
    "nan_coco.json": "NaN or infinite coordinate",
    "empty_mask.json": "empty mask",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, class_map) -> Path:
    """Synthetic dataset + one bad file of each kind + ``datalist_all.json`` listing good and bad together."""
    root = tmp_path_factory.mktemp("bad_inputs")
    # SYN00001-5 labeled, SYN00006 validation, SYN00007 test, SYN00008-9 unlabeled
    write_dataset(root, labeled=5, unlabeled=2, validation=1, test=1, seed=31, progress=False)
    datalist = json.loads((root / "datalist.json").read_text())
    source = root / "studies" / "SYN00001.dcm"
    (root / "bad").mkdir()
    for name, (mutate, _) in DICOM_CASES.items():
        ds = pydicom.dcmread(source)
        mutate(ds)
        _new_instance(ds)
        ds.save_as(root / "bad" / name, enforce_file_format=True)
    assert (root / "bad" / "lying_header.dcm").stat().st_size < 1.1e6
    shutil.copy(root / "studies" / "SYN00007.dcm", root / "bad" / "good.dcm")  # inference: the batch goes on

    labels = root / "labels"
    # NaN in a LabelMe polygon (SYN00002) and in a COCO polygon (SYN00003); an empty RLE mask (SYN00004)
    truth = load_annotation(labels / "SYN00002.json", (1024, 256), view="anterior")
    doc = to_labelme("SYN00002.dcm", (1024, 256), truth.masks, truth.class_names)
    doc["shapes"][0]["points"][1] = [float("nan"), 300.0]
    write_json_atomic(doc, labels / "nan_labelme.json")
    for study, name, segmentation in (
        ("SYN00003", "nan_coco.json", [[10.0, 300.0, float("nan"), 310.0, 30.0, 330.0]]),
        ("SYN00004", "empty_mask.json", {"size": [1024, 256], "counts": [1024 * 256]}),
    ):
        coco = json.loads((labels / f"{study}.json").read_text())
        anterior = next(im["id"] for im in coco["images"] if im["view"] == "anterior")
        coco["annotations"].append(
            {"id": 9999, "image_id": anterior, "category_id": 1, "iscrowd": 0, "segmentation": segmentation}
        )
        write_json_atomic(coco, labels / name)

    # duplicates: SYN00001 itself listed again in test under another patient id; a byte copy of the validation
    # study in test; a re-export of SYN00005 (same SOP instance, another PatientID, so other bytes) and an
    # RLE-compressed copy of SYN00004 (new SOP instance UID, same pixels) in unlabeled
    shutil.copy(root / "studies" / "SYN00006.dcm", root / "studies" / "copy_of_6.dcm")
    ds = pydicom.dcmread(root / "studies" / "SYN00005.dcm")
    ds.PatientID, ds.PatientName = "REEXPORT5", "Re^Export"
    ds.save_as(root / "studies" / "SYN00005_reexport.dcm", enforce_file_format=True)
    write_compressed_copy(root / "studies" / "SYN00004.dcm", root / "studies" / "SYN00004_rle.dcm", "rle")

    def item(image: str, label: str | None, pid: str, view: str = "anterior") -> dict:
        return {"image": image, "view": view, "patient_id": pid, **({"label": label} if label else {})}

    labeled = [it for it in datalist["labeled"] if it["patient_id"] in ("SYN00001", "SYN00005")]
    labeled += [item(f"bad/{name}", "labels/SYN00001.json", f"BAD_{name[:-4]}") for name in DICOM_CASES]
    labeled += [
        item("studies/SYN00002.dcm", "labels/nan_labelme.json", "SYN00002"),
        item("studies/SYN00003.dcm", "labels/nan_coco.json", "SYN00003"),
        item("studies/SYN00004.dcm", "labels/empty_mask.json", "SYN00004"),
    ]
    test = datalist["test"] + [
        item("studies/SYN00001.dcm", "labels/SYN00001.json", "OTHER"),
        item("studies/copy_of_6.dcm", "labels/SYN00006.json", "COPY6"),
    ]
    unlabeled = datalist["unlabeled"] + [
        item("studies/SYN00005_reexport.dcm", None, "REEXPORT5"),
        item("studies/SYN00004_rle.dcm", None, "RLE4"),
    ]
    everything = {"labeled": labeled, "unlabeled": unlabeled, "validation": datalist["validation"], "test": test}
    write_json_atomic(everything, root / "datalist_all.json")
    return root


def _expected_lines(header_only: bool = False) -> list[tuple[str, str]]:
    """(file, reason) the data check must report; ``header_only``: those found without decoding pixels."""
    expected = [
        (name, reason) for name, (_, reason) in DICOM_CASES.items() if not header_only or name not in PIXEL_LEVEL
    ]
    expected += list(ANNOTATION_CASES.items())
    expected += [
        ("SYN00001.dcm", "listed in several splits ['labeled', 'test']"),
        ("SYN00001.dcm", "listed under several patient ids ['SYN00001', 'OTHER']"),
        ("SYN00006.dcm", "the same image as"),
        ("SYN00006.dcm", "copy_of_6.dcm (identical SOPInstanceUID and file content (sha256)"),
        ("SYN00005.dcm", "SYN00005_reexport.dcm (identical SOPInstanceUID"),
    ]
    if not header_only:
        expected.append(("SYN00004.dcm", "SYN00004_rle.dcm (identical pixel data)"))
    return expected


# ------------------------------------------------------------------------------------------------ data check


def test_check_data_names_every_bad_input_in_one_pass(bad):
    before = _digest(bad)
    result = _run("scripts/check_data.py", "--datalist", str(bad / "datalist_all.json"), "--dataset_dir", str(bad))
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    for name, reason in _expected_lines():
        assert any(name in line and reason in line for line in errors), (name, reason, errors)
    # each bad DICOM is named once, on its own line, with its own reason
    for name, (_, reason) in DICOM_CASES.items():
        lines = [line for line in errors if f"/bad/{name}:" in line]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert _digest(bad) == before


# ------------------------------------------------------------------------------------------------- training


def _training_parser(root: Path, datalist_file: Path, **overrides: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "train.json")
    parser.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": str(root),
            "data_list_file_path": str(datalist_file),
            "chest_detector_path": str(root / "no_detector_needed.pt"),
            "image_size": 96,
            **overrides,
        }
    )
    return parser


def _chain(error: BaseException) -> str:
    """Every message of an exception chain (MONAI wraps a transform's error in RuntimeError)."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


# train.json checks its datalist first (test below); these tests reach the loading chain behind that check
PLAIN_DATALIST = "$malignet_bundle.data.datalist.load_datalist(@data_list_file_path)"


def training_chain_errors(root: str) -> dict[str, str]:
    """For each bad labeled item alone: the error train.json's labeled dataset raises while being built.

    Keyed by the bad file (the image, or the annotation for the annotation cases). Run by the test below in a
    capped subprocess, since the NaN cases must not reach pycocotools. The datalist check is bypassed, so the
    loading chain itself (reader, annotation loader) must refuse each file.
    """
    root = Path(root)
    datalist = json.loads((root / "datalist_all.json").read_text())
    # control: the same chain builds the good study's two views
    good = [it for it in datalist["labeled"] if it["patient_id"] == "SYN00001"]
    write_json_atomic({"labeled": good, "validation": datalist["validation"]}, root / "case.json")
    try:
        built = _training_parser(root, root / "case.json", datalist=PLAIN_DATALIST).get_parsed_content("train#dataset")
        errors = {"good": f"built {len(built)} items of shape {tuple(built[0]['image'].shape)}"}
    finally:
        (root / "case.json").unlink()
    for item in datalist["labeled"]:
        key = item["image"] if item["image"].startswith("bad/") else item["label"]
        if not (key.startswith("bad/") or Path(key).name in ANNOTATION_CASES):
            continue
        case = root / "case.json"
        write_json_atomic({"labeled": [item], "validation": datalist["validation"]}, case)
        try:
            _training_parser(root, case, datalist=PLAIN_DATALIST).get_parsed_content("train#dataset")
            errors[key] = "built without an error"
        except Exception as e:
            errors[key] = _chain(e)
        finally:
            case.unlink()
    return errors


def test_train_json_labeled_dataset_refuses_each_bad_input_before_training(bad):
    before = _digest(bad)
    code = (
        "import json, sys; from tests.test_bad_inputs import training_chain_errors; "
        "print(json.dumps(training_chain_errors(sys.argv[1])))"
    )
    result = _run("-c", code, str(bad))
    assert result.returncode == 0, result.stderr[-4000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors.pop("good") == "built 2 items of shape (1, 96, 96)"
    for name, (_, reason) in DICOM_CASES.items():
        message = errors[f"bad/{name}"]
        # the NM reader's own error, not another reader's fallback or an annotation size mismatch
        assert f"DicomInputError: {bad / 'bad' / name}: " in message and reason in message, (name, message)
        assert "does not match the image size" not in message
    for name, reason in ANNOTATION_CASES.items():
        message = errors[f"labels/{name}"]
        assert f"AnnotationError: {bad / 'labels' / name}: " in message and reason in message, (name, message)
    assert _digest(bad) == before


def test_checked_datalist_lists_every_header_level_problem_at_once(bad, class_map):
    """``checked_datalist`` as train.json's ``datalist``: all problems before anything is built, one per line."""
    from malignet_bundle.data.datalist import DatalistError

    before = _digest(bad)
    code = (
        "import sys; from tests.test_bad_inputs import _training_parser; from pathlib import Path; "
        "root = Path(sys.argv[1]); "
        "p = _training_parser(root, root / 'datalist_all.json', datalist="
        "'$malignet_bundle.data.check.checked_datalist(@data_list_file_path, @dataset_dir, @class_map)'); "
        "p.get_parsed_content('datalist')"
    )
    result = _run("-c", code, str(bad))
    assert result.returncode == 1 and DatalistError.__name__ in result.stderr, result.stderr[-4000:]
    lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("  /")]
    for name, reason in _expected_lines(header_only=True):
        assert any(name in line and reason in line for line in lines), (name, reason, lines)
    # header level: constant frames and pixel-identical copies need the pixels (the loader refuses the former)
    assert not any("all_zero.dcm" in line or "SYN00004_rle.dcm" in line for line in lines)
    assert _digest(bad) == before


def test_unlabeled_split_skips_each_bad_scan_with_its_reason(bad, caplog):
    before = _digest(bad)
    datalist = json.loads((bad / "datalist_all.json").read_text())
    items = datalist["unlabeled"][:1] + [
        {"image": f"bad/{name}", "view": "anterior", "patient_id": f"U_{name}"} for name in DICOM_CASES
    ]
    case = bad / "case_unlabeled.json"
    write_json_atomic({"labeled": datalist["labeled"][:2], "unlabeled": items}, case)
    try:
        with caplog.at_level(logging.WARNING):
            kept = _training_parser(bad, case).get_parsed_content("train#unlabeled_dataset#data")
    finally:
        case.unlink()
    assert [Path(it["image"]).name for it in kept] == [Path(items[0]["image"]).name]
    for name, (_, reason) in DICOM_CASES.items():
        assert any(f"bad/{name}: " in r.getMessage() and reason in r.getMessage() for r in caplog.records), name
    assert _digest(bad) == before


def test_monai_bundle_training_stops_before_the_first_step_naming_the_file(bad, tmp_path):
    """The real runner on train.json: a CT file among the labeled scans is refused by the NM reader itself."""
    before = _digest(bad)
    datalist = json.loads((bad / "datalist_all.json").read_text())
    good = [it for it in datalist["labeled"] if it["patient_id"] == "SYN00001"]
    ct = {"image": "bad/ct.dcm", "view": "anterior", "patient_id": "BAD_ct", "label": "labels/SYN00001.json"}
    case = tmp_path / "datalist.json"
    case.write_text(json.dumps({"labeled": good + [ct], "validation": datalist["validation"]}))
    result = _run(
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(ROOT / "configs" / "train.json"),
        "--bundle_root",
        str(ROOT),
        "--dataset_dir",
        str(bad),
        "--data_list_file_path",
        str(case),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "runs"),
        "--chest_detector_path",
        str(tmp_path / "none.pt"),
        "--image_size",
        "96",
        "--epochs",
        "1",
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{bad / 'bad' / 'ct.dcm'}: modality is CT, expected NM" in log, log[-4000:]
    assert "does not match the image size" not in log
    # the trainer never started: no engine run, no iteration logged, no checkpoint
    assert "Engine run" not in log and "Iter:" not in log and not list((tmp_path / "models").glob("*.pt"))
    assert _digest(bad) == before


# ------------------------------------------------------------------------------------------------ inference


class NoLesions(torch.nn.Module):
    """A network that finds nothing: inference's handling of inputs is under test, not the model."""

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        h, w = images[0].shape[-2:]
        empty = torch.zeros(0)
        return [{"masks": torch.zeros(0, 1, h, w), "labels": empty.long(), "scores": empty}]


def test_inference_skips_each_bad_study_and_lists_it(bad, tmp_path, class_map):
    """inference.json's evaluator over a folder of bad files and one good: each bad study skipped with its reason."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from malignet_bundle.transforms.io import SelectViewd

    before = _digest(bad)

    def whole_view(view: dict) -> dict:  # no chest detector: the network sees the whole view
        h, w = view["image"].shape[-2:]
        return {**view, "crop_box": torch.tensor([0, 0, w, h])}

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    overrides = {
        "bundle_root": str(ROOT),
        "input": str(bad / "bad"),
        "output_dir": str(tmp_path),
        "device": "$torch.device('cpu')",
        "score_threshold": 0.5,
        "dicom_seg": False,
        "progress": False,
        "network": NoLesions(),
        "view_transforms": Compose([SelectViewd("image"), whole_view]),
    }
    for key, value in overrides.items():
        parser[key] = value
    assert len(parser.get_parsed_content("studies")) == len(DICOM_CASES) + 1  # one study per file
    parser.get_parsed_content("evaluator").run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["written"]) == 1 and (tmp_path / summary["written"][0] / "report.json").is_file()
    assert not list(tmp_path.rglob("seg_*.dcm"))  # --dicom_seg false
    skipped = {Path(reason.split(": ", 1)[0]).name: reason for _, reason in summary["skipped"]}
    assert set(skipped) == set(DICOM_CASES)
    for name, (_, reason) in DICOM_CASES.items():
        assert skipped[name].startswith(f"{bad / 'bad' / name}: ") and reason in skipped[name], skipped[name]
    assert _digest(bad) == before

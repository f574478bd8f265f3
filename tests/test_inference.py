"""Whole-body inference: study discovery, mapping crops back to stored frames, outputs through the bundle runner."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, ScaleIntensityRangePercentilesd

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.synthesize import synthesize_study, write_study
from malignet_bundle.engines.inference import (
    LoadStudyd,
    collect_studies,
    plan_study,
    predict_studies,
    write_study_outputs,
)
from malignet_bundle.transforms.geometry import CropToChestd, UnmirrorPosteriord
from malignet_bundle.transforms.io import LoadAnnotationd, LoadNMViewd, SelectViewd

from .conftest import ROOT


class OracleNetwork(torch.nn.Module):
    """Returns the ground-truth masks of the crop it is given, as a perfect detector would.

    The inference workflow is under test here, not the network: if the masks come back to the wrong place in
    the stored frame (crop offset, resize, posterior mirroring), they miss the ground truth. The view chain
    queues each view's crop with its annotation; the workflow calls the network once per view, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[dict] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        current = self.queue.pop(0)
        assert torch.equal(torch.as_tensor(images[0]), torch.as_tensor(current["image"]).float())  # its own crop
        masks = torch.as_tensor(current["masks"]).float()[:, None]
        n = masks.shape[0]
        return [{"masks": masks, "labels": torch.as_tensor(current["labels"]), "scores": torch.linspace(1, 0.5, n)}]


def _oracle_parser(class_map, source, *, empty: bool = False, **overrides) -> ConfigParser:
    """``configs/inference.json`` on ``source`` with the oracle as network and its ground truth in the view chain.

    ``empty``: the oracle finds nothing. Handlers are none unless ``overrides`` give them.
    """
    oracle = OracleNetwork()

    def with_label(view: dict) -> dict:  # the study's annotation, labels/<study>.json beside studies/
        label = re.sub(r"(_ANTE|_POST)?\.dcm$", ".json", str(view["source_path"]).replace("studies", "labels"))
        return {**view, "label": label}

    def queue(view: dict) -> dict:
        if empty:
            view = {**view, "masks": view["masks"][:0], "labels": view["labels"][:0]}
        oracle.queue.append(view)
        return view

    chain = Compose(
        [
            with_label,
            LoadAnnotationd("label", class_map=class_map),
            SelectViewd("image"),
            ScaleIntensityRangePercentilesd("image", 0, 99.5, 0.0, 1.0),
            CropToChestd("image", spatial_size=320, margin=0.05),
            queue,
        ]
    )
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    settings = {
        "bundle_root": str(ROOT),
        "input": str(source),
        "device": "$torch.device('cpu')",
        "progress": False,
        "handlers": [],
        "network": oracle,
        "view_transforms": chain,
        **overrides,
    }
    for key, value in settings.items():
        parser[key] = value
    return parser


def _oracle_predictions(class_map, source, **overrides) -> list:
    return predict_studies(_oracle_parser(class_map, source, **overrides).get_parsed_content("evaluator"))


def _study_with_chest_lesions(dataset):
    """The first labeled study with a lesion wholly inside the chest box of each view (not every study has one)."""
    for study in collect_studies(dataset / "datalist.json", split="labeled"):
        counts = []
        for view in ("anterior", "posterior"):
            truth = load_annotation(study.items[0]["label"], (1024, 256), view=view)
            x0, y0, x1, y1 = (int(v) for v in truth.chest_box)
            counts.append(sum(int(m.sum() == m[y0:y1, x0:x1].sum()) for m in truth.masks))
        if min(counts) > 0:
            return study
    raise AssertionError(f"no labeled study of {dataset} has chest lesions in both views")


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _check_segs(written, prediction, class_map):
    """Each view's SEG reads back with highdicom, names its source frame, and equals the class unions."""
    from malignet_bundle.outputs.dicom_seg import read_dicom_seg_masks

    for number, view in enumerate(prediction.views, start=1):
        path = written[f"seg_{view.view}"]
        uid, frame, masks = read_dicom_seg_masks(path)
        assert uid == prediction.datasets[number - 1].SOPInstanceUID
        assert frame == view.frame_index + 1
        assert masks.shape == (*view.image.shape, class_map.num_classes)
        for label in range(1, class_map.num_classes + 1):
            expected = view.masks[view.labels == label].any(0) if (view.labels == label).any() else 0
            assert np.array_equal(masks[..., label - 1], np.zeros_like(masks[..., 0]) | expected), (view.view, label)
        assert masks.any() == bool(len(view.masks))
        if shutil.which("dciodvfy"):
            check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
            assert not errors, errors


def test_masks_come_back_onto_the_lesions_of_the_stored_frames(synthetic_dataset, class_map):
    study = _study_with_chest_lesions(synthetic_dataset)
    (prediction,) = _oracle_predictions(class_map, study.items[0]["image"])
    assert prediction.study_id == study.study_id
    assert [v.view for v in prediction.views] == ["anterior", "posterior"]
    for view in prediction.views:
        truth = load_annotation(study.items[0]["label"], view.image.shape, view=view.view)
        assert view.masks.shape[1:] == view.image.shape
        x0, y0, x1, y1 = (int(v) for v in view.chest_box)
        inside = [m for m in truth.masks if m.sum() == m[y0:y1, x0:x1].sum()]  # lesions wholly in the crop
        assert len(truth.masks) >= len(view.masks) >= len(inside) > 0
        inter = (view.masks[:, None] & truth.masks[None]).sum((2, 3))
        union = (view.masks[:, None] | truth.masks[None]).sum((2, 3))
        best = (inter / np.maximum(union, 1)).max(1)
        # resize down to 320 and back costs a little; a wrong offset or mirroring would give ~0
        assert best.min() > 0.5 and best.mean() > 0.7, (view.view, best)
        truth_box = truth.chest_box
        assert abs(x0 - truth_box[0]) < 0.1 * 256 + 2 and abs(x1 - truth_box[2]) < 0.1 * 256 + 2
        assert abs(y0 - truth_box[1]) < 0.1 * 1024 + 2


def test_each_file_of_a_study_is_decoded_once_and_loads_as_the_nm_reader_gives_it(synthetic_dataset):
    """A datalist lists a two-view file once per view: one decode serves both views, identical to a file read."""
    study = collect_studies(synthetic_dataset / "datalist.json", split="labeled")[0]
    assert len(study.items) == 2 and study.items[0]["image"] == study.items[1]["image"]
    planned = plan_study(study)
    assert [entry.view for entry in planned] == ["anterior", "posterior"]
    assert planned[0].nm is planned[1].nm  # decoded once
    loaded = LoadStudyd()(study.as_item())
    read = LoadNMViewd("image")({"image": study.items[0]["image"]})["image"]
    for k, view in enumerate(loaded["views"]):
        assert torch.equal(view["image"], read) and view["image"].meta["views"] == read.meta["views"]
        assert view["frame_index"] == k and np.array_equal(view["frame"], read.array[k])
        assert view["label"] == study.items[k]["label"]  # the item's other keys travel with the view
    assert loaded["spacing"] == tuple(read.meta["spacing"])


def test_unmirror_posterior_undoes_the_view_selection_mirroring(synthetic_dataset):
    study = collect_studies(synthetic_dataset / "datalist.json", split="labeled")[0]
    stored = LoadNMViewd("image")({"image": study.items[0]["image"]})["image"]
    masks = torch.zeros((2, *stored.shape[1:]), dtype=torch.uint8)
    masks[0, 100:140, 20:60], masks[1, 500:520, 200:250] = 1, 1
    chest = torch.tensor([30.0, 80.0, 170.0, 400.0])
    for view in ("anterior", "posterior"):
        seen = SelectViewd("image")({"image": stored, "view": view, "masks": masks, "chest_box": chest})
        assert seen["image"].meta["mirrored"] == (view == "posterior")
        assert torch.equal(seen["masks"], masks) == (view == "anterior")  # posterior: mirrored for the network
        back = UnmirrorPosteriord("masks")({**seen, "masks": seen["masks"].numpy()})
        assert np.array_equal(back["masks"], masks.numpy())
        assert [float(v) for v in back["chest_box"]] == pytest.approx(chest.tolist())


def test_one_file_per_view_study_gets_a_seg_per_source_file(tmp_path, class_map):
    # seed [5, 7] draws chest lesions in both views
    items = write_study(synthesize_study([5, 7], "SINGLE"), tmp_path / "in", class_map, layout="single")
    (prediction,) = _oracle_predictions(class_map, tmp_path / "in" / "studies")
    assert sorted(v.view for v in prediction.views) == ["anterior", "posterior"]
    assert [v.frame_index for v in prediction.views] == [0, 0]
    assert len({ds.SOPInstanceUID for ds in prediction.datasets}) == 2
    assert all(len(v.masks) for v in prediction.views)  # a study with chest lesions in both views
    written = write_study_outputs(prediction, class_map, tmp_path / "out")
    _check_segs(written, prediction, class_map)
    assert len(items) == 2


def test_a_view_without_lesions_gives_empty_outputs(tmp_path, synthetic_dataset, class_map):
    datalist = synthetic_dataset / "datalist.json"
    (prediction,) = _oracle_predictions(class_map, datalist, split="labeled", max_studies=1, empty=True)
    assert all(v.masks.shape == (0, *v.image.shape) for v in prediction.views)
    written = write_study_outputs(prediction, class_map, tmp_path)
    report = json.loads(written["report"].read_text())
    assert report["lesions"] == [] and report["metastasis"] == {"positive": False, "lesion_ids": []}
    assert written["seg_anterior"].is_file()


def test_studies_from_file_folder_and_datalist(tmp_path, synthetic_dataset, class_map):
    write_study(synthesize_study([3, 1], "MULTI"), tmp_path / "in", class_map)
    write_study(synthesize_study([3, 2], "SINGLE"), tmp_path / "in", class_map, layout="single")
    (tmp_path / "in" / "studies" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "studies" / "broken.dcm").write_bytes(b"\x00" * 300)
    studies = collect_studies(tmp_path / "in" / "studies")
    by_files = sorted(sorted(it["image"].rsplit("/", 1)[-1] for it in s.items) for s in studies)
    assert len(studies) == 3  # the multi-frame study, the two single-frame files of one study, the broken file
    assert ["broken.dcm"] in by_files
    assert sorted(len(s.items) for s in studies) == [1, 1, 2]
    assert sorted(s.study_id for s in studies) == ["MULTI", "SINGLE", "broken"]
    one = collect_studies(tmp_path / "in" / "studies" / "broken.dcm")
    assert len(one) == 1 and one[0].items[0]["view"] is None
    from_list = collect_studies(synthetic_dataset / "datalist.json", split="labeled")
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    assert len(from_list) == len({it["patient_id"] for it in datalist["labeled"]})
    assert all(len(s.items) == 2 and all("label" in it for it in s.items) for s in from_list)
    with pytest.raises(FileNotFoundError, match="no such DICOM file"):
        collect_studies(tmp_path / "missing")


def test_report_coordinates_land_on_the_lesions(tmp_path, synthetic_dataset, class_map):
    """The workflow's own writer handlers, one study per iteration: files, content, and the inputs untouched."""
    from pycocotools import mask as mask_utils

    study = _study_with_chest_lesions(synthetic_dataset)
    source = study.items[0]["image"]
    before = _sha(source)
    parser = _oracle_parser(class_map, source)
    parser["handlers"] = ConfigParser.load_config_file(str(ROOT / "configs" / "inference.json"))["handlers"]
    parser["output_dir"] = str(tmp_path / "out")
    (prediction,) = predict_studies(parser.get_parsed_content("evaluator"))
    assert _sha(source) == before
    folder = tmp_path / "out" / study.study_id
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "report.json",
        "overlay.png",
        "anterior_instances.nii.gz",
        "anterior_instances.classes.json",
        "posterior_instances.nii.gz",
        "posterior_instances.classes.json",
        "seg_anterior.dcm",
        "seg_posterior.dcm",
    }
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"written": [study.study_id], "skipped": []}
    written = {
        "report": folder / "report.json",
        **{f"seg_{v}": folder / f"seg_{v}.dcm" for v in ("anterior", "posterior")},
    }
    _check_segs(written, prediction, class_map)
    # the same prediction written by the function outside the evaluator gives the same files
    again = write_study_outputs(
        prediction, class_map, tmp_path / "again", model=parser.get_parsed_content("model_info")
    )
    assert json.loads(again["report"].read_text()) == json.loads(written["report"].read_text())
    for view in ("anterior", "posterior"):
        assert _sha(again[f"nifti_{view}"]) == _sha(folder / f"{view}_instances.nii.gz")
    report = json.loads(written["report"].read_text())
    truth = {
        v.view: load_annotation(study.items[0]["label"], v.image.shape, view=v.view).masks for v in prediction.views
    }
    lesions = report["lesions"]
    assert len(lesions) == sum(len(v.masks) for v in prediction.views) > 0
    for lesion in lesions:
        mask = mask_utils.decode(lesion["mask"]).astype(bool)
        gt = truth[lesion["view"]]
        iou = (mask[None] & gt).sum((1, 2)) / np.maximum((mask[None] | gt).sum((1, 2)), 1)
        assert iou.max() > 0.5, lesion["id"]
        x0, y0, x1, y1 = lesion["box"]
        assert gt[int(iou.argmax()), int(y0) : int(y1), int(x0) : int(x1)].any()


@pytest.fixture(scope="module")
def inference_models(tmp_path_factory, synthetic_dataset, class_map):
    """A folder with a briefly trained chest detector and an untrained MaligNet ``model.pt``."""
    from malignet_bundle.engines.chest_detector import train_chest_detector
    from malignet_bundle.networks.malignet import MaligNet

    folder = tmp_path_factory.mktemp("inference_models")
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    train_chest_detector(
        datalist, synthetic_dataset, class_map, folder / "chest_detector.pt", epochs=1, batch_size=4, progress=False
    )
    torch.manual_seed(0)
    torch.save(MaligNet(num_classes=class_map.num_classes + 1).state_dict(), folder / "model.pt")
    return folder


def _infer(models, cwd, *args: str, score_threshold: str | None = "0.0") -> subprocess.CompletedProcess:
    """``monai.bundle run`` with ``inference.json`` (score threshold 0 unless told; no progress bar) and ``args``."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json")]
    command += ["--bundle_root", str(ROOT), "--ckpt_dir", str(models)]
    command += ["--score_threshold", score_threshold] if score_threshold is not None else []
    command += ["--progress", "false", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_inference_json_writes_all_outputs_and_skips_a_broken_study(tmp_path, synthetic_dataset, inference_models):
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    studies = tmp_path / "studies"
    studies.mkdir()
    source = synthetic_dataset / datalist["test"][0]["image"]
    shutil.copy(source, studies / "study.dcm")
    (studies / "broken.dcm").write_bytes(b"\x00not dicom" * 64)
    hashes = {p.name: _sha(p) for p in studies.iterdir()}
    result = _infer(inference_models, tmp_path, "--input", str(studies), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name: _sha(p) for p in studies.iterdir()} == hashes  # inputs untouched
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["written"]) == 1
    assert [s[0] for s in summary["skipped"]] == ["broken"] and "broken.dcm" in summary["skipped"][0][1]
    out = tmp_path / "out" / summary["written"][0]
    names = {p.name for p in out.iterdir()}
    expected = {"report.json", "overlay.png", "seg_anterior.dcm", "seg_posterior.dcm", "anterior_instances.nii.gz"}
    assert expected | {"posterior_instances.nii.gz"} <= names
    assert not [n for n in names if n.startswith(".tmp")]
    report = json.loads((out / "report.json").read_text())
    assert report["lesions"], "an untrained network at score threshold 0 still returns detections"
    # --score_threshold is used and said to be (inference_models has no model.json to override here)
    assert report["model"]["score_threshold"] == 0.0 and report["model"]["operating_point"]["origin"] == "override"
    for view in ("anterior", "posterior"):
        reported = [les for les in report["lesions"] if les["view"] == view]
        classes = json.loads((out / f"{view}_instances.classes.json").read_text())
        # instance k of the label image is lesion "<view>-k" of the report (overlaps: the later one shows)
        assert classes == {les["id"].split("-")[1]: les["class_name"] for les in reported}
        nifti = load_annotation(out / f"{view}_instances.nii.gz", (1024, 256))
        assert 0 < len(nifti.masks) <= len(reported)


def test_inference_never_writes_into_its_inputs_nor_reads_its_outputs(tmp_path, synthetic_dataset, inference_models):
    """Output folders inside the inputs are refused; a rerun over a folder with earlier outputs skips them;
    a datalist without --dataset_dir reads the files beside it, not the bundle's default dataset."""
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    site = tmp_path / "site"
    (site / "studies").mkdir(parents=True)
    shutil.copy(synthetic_dataset / datalist["test"][0]["image"], site / "studies" / "study.dcm")
    # a user's own annotation beside the study: the file inference would have overwritten
    (site / "studies" / "study").mkdir()
    (site / "studies" / "study" / "anterior_instances.nii.gz").write_bytes(b"my annotation")
    before = _tree(site)

    for output in (site / "studies", site / "studies" / "out"):
        refused = _infer(inference_models, tmp_path, "--input", str(site / "studies"), "--output_dir", str(output))
        assert refused.returncode != 0
        assert "choose an --output_dir outside it" in refused.stderr and str(site / "studies") in refused.stderr
        assert _tree(site) == before  # nothing written, nothing changed

    # a single file: the per-study folder <output>/<file stem> would be the very folder that holds it
    (tmp_path / "scan").mkdir()
    shutil.copy(site / "studies" / "study.dcm", tmp_path / "scan" / "scan.dcm")
    refused = _infer(
        inference_models, tmp_path, "--input", str(tmp_path / "scan" / "scan.dcm"), "--output_dir", str(tmp_path)
    )
    assert refused.returncode != 0 and "would hold the input" in refused.stderr
    assert [p.name for p in (tmp_path / "scan").iterdir()] == ["scan.dcm"]

    first = _infer(inference_models, tmp_path, "--input", str(site / "studies"), "--output_dir", str(site / "out"))
    assert first.returncode == 0, first.stderr[-3000:]
    (study_id,) = json.loads((site / "out" / "summary.json").read_text())["written"]  # the PatientID
    assert (site / "out" / study_id / "seg_anterior.dcm").is_file()
    # a later run over the whole site finds the study once and never the SEG files of the first run
    second = _infer(inference_models, tmp_path, "--input", str(site), "--output_dir", str(tmp_path / "out2"))
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary == {"written": [study_id], "skipped": []}

    # a datalist given as --input alone: its relative paths resolve beside it
    listed = tmp_path / "listed"
    (listed / "studies").mkdir(parents=True)
    shutil.copy(site / "studies" / "study.dcm", listed / "studies" / "mine.dcm")
    item = {"image": "studies/mine.dcm", "view": "anterior", "patient_id": "MINE"}
    (listed / "datalist.json").write_text(
        json.dumps({"labeled": [], "unlabeled": [], "validation": [], "test": [item]})
    )
    third = _infer(
        inference_models, tmp_path, "--input", str(listed / "datalist.json"), "--output_dir", str(tmp_path / "out3")
    )
    assert third.returncode == 0, third.stderr[-3000:]
    summary = json.loads((tmp_path / "out3" / "summary.json").read_text())
    assert summary == {"written": ["MINE"], "skipped": []}
    report = json.loads((tmp_path / "out3" / "MINE" / "report.json").read_text())
    assert str(listed / "studies" / "mine.dcm") in json.dumps(report)


def _models_with_threshold(inference_models: Path, folder: Path, threshold: float | None = None) -> Path:
    """``inference_models``' files in ``folder``; with a ``threshold``, a ``model.json`` storing it as training does."""
    from malignet_bundle.engines.operating_point import write_operating_point
    from malignet_bundle.metrics.operating_point import choose_operating_threshold

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "chest_detector.pt"):
        if not (folder / name).is_file():
            shutil.copyfile(inference_models / name, folder / name)
    if threshold is not None:
        choice = choose_operating_threshold([threshold, 0.7], [0.5, 0.1])  # validation did best at ``threshold``
        write_operating_point(folder / "model.pt", choice, epoch=3)
    return folder


def _median(scores: list[float]) -> float:
    """A threshold that keeps about half of ``scores`` (an untrained network's lie in a narrow band)."""
    return round(float(np.median(scores)), 6)


def _report(out: Path) -> dict:
    (study,) = json.loads((out / "summary.json").read_text())["written"]
    return json.loads((out / study / "report.json").read_text())


def test_inference_uses_the_threshold_stored_with_the_model_unless_told(tmp_path, synthetic_dataset, inference_models):
    """report.json says which threshold was used and where it came from: 0.7 without model.json, else its own."""
    datalist = load_datalist(synthetic_dataset / "datalist.json")
    study = str(synthetic_dataset / datalist["test"][0]["image"])
    models = _models_with_threshold(inference_models, tmp_path / "models")
    logging_conf = ROOT / "configs" / "logging.conf"

    def run(name: str) -> dict:
        args = ("--input", study, "--output_dir", str(tmp_path / name), "--logging_file", str(logging_conf))
        result = _infer(models, tmp_path, *args, score_threshold=None)
        assert result.returncode == 0, result.stderr[-3000:]
        return {**_report(tmp_path / name), "log": result.stdout + result.stderr}

    bare = run("bare")  # no model.json: the thesis's 0.7, said in the log and the report
    assert "no model.json beside" in bare["log"]
    assert bare["model"]["score_threshold"] == 0.7 and bare["model"]["operating_point"]["origin"] == "default"
    scores = [lesion["score"] for lesion in bare["lesions"]]
    assert len(set(scores)) > 1 and min(scores) >= 0.7

    threshold = _median(scores)
    _models_with_threshold(inference_models, models, threshold)
    stored = run("stored")
    point = stored["model"]["operating_point"]
    assert stored["model"]["score_threshold"] == threshold == point["threshold"]
    assert point["origin"] == "validation" and str(models / "model.json") in point["source"]
    kept = [lesion for lesion in bare["lesions"] if lesion["score"] >= threshold]
    assert [les["score"] for les in stored["lesions"]] == [les["score"] for les in kept] and len(kept) < len(scores)

    # an explicit --score_threshold: test_inference_json_writes_all_outputs_and_skips_a_broken_study


def test_the_label_infer_task_uses_the_stored_threshold_unless_told(tmp_path, synthetic_dataset, inference_models):
    from malignet_bundle.engines.label_tasks import infer_study

    datalist = load_datalist(synthetic_dataset / "datalist.json")
    study = synthetic_dataset / datalist["test"][0]["image"]
    models = _models_with_threshold(inference_models, tmp_path / "models")
    bare = infer_study(study, tmp_path / "bare", ROOT, models, device="cpu")
    assert bare["score_threshold"] == 0.7 and bare["operating_point"]["origin"] == "default"
    threshold = _median([lesion["score"] for lesion in bare["lesions"]])
    _models_with_threshold(inference_models, models, threshold)
    stored = infer_study(study, tmp_path / "stored", ROOT, models, device="cpu")
    assert stored["score_threshold"] == threshold and stored["operating_point"]["origin"] == "validation"
    assert 0 < len(stored["lesions"]) < len(bare["lesions"])
    assert all(lesion["score"] >= threshold for lesion in stored["lesions"])
    assert json.loads((tmp_path / "stored" / "result.json").read_text())["operating_point"] == stored["operating_point"]
    told = infer_study(study, tmp_path / "told", ROOT, models, score_threshold=0.7, device="cpu")
    assert told["score_threshold"] == 0.7 and told["operating_point"]["origin"] == "override"
    assert len(told["lesions"]) == len(bare["lesions"])


def test_colliding_files_of_one_study_are_named_and_the_run_fails(colliding_folder, class_map, tmp_path):
    """Two files of one study that both hold the anterior view: refused with both named, and no exit 0."""
    from malignet_bundle.engines.inference import NoStudyWrittenError

    studies = collect_studies(colliding_folder)
    assert len(studies) == 1 and len(studies[0].items) == 2  # one StudyInstanceUID
    parser = _oracle_parser(class_map, colliding_folder, output_dir=str(tmp_path / "out"))
    parser["handlers"] = ConfigParser.load_config_file(str(ROOT / "configs" / "inference.json"))["handlers"]
    evaluator = parser.get_parsed_content("evaluator")
    with pytest.raises(NoStudyWrittenError, match="both hold the anterior view"):
        evaluator.run()  # the oracle is never reached: the files are checked first
    ((study_id, reason),) = json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"]
    assert "anterior_copy.dcm" in reason and "posterior_copy.dcm" in reason, reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".malignet-inference-output", "summary.json"]

"""The MONAI Label tasks with a pixel-level network (``--conf network unet``) next to MaligNet.

Real code on a tiny synthetic datastore (one labeled and one unlabeled study) and a randomly initialised tiny
U-Net; the app's commands are built by its own ``BundleRunner`` (the bundle's environment can load it without
MONAI Label) and run for real. No MONAI Label server is started: ``tests/test_monailabel_app.py`` does that.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import BasicUNet

from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.synthesize import write_dataset
from malignet_bundle.engines.label_tasks import NetworkMismatchError, infer_study, train_on_datastore
from malignet_bundle.networks.segmentation import SemanticSegmenter
from malignet_bundle.networks.selection import (
    NETWORKS,
    inference_config_files,
    is_pixel_level,
    training_config_files,
)
from malignet_bundle.outputs.label_map import read_label_map, write_label_map
from malignet_bundle.semi_supervised.selection import check_method, default_method, method_overrides
from scripts.label_task import main as label_task

from .conftest import ROOT
from .test_monailabel_app import _study_label_map

CONFIGS = ROOT / "configs"
UNET_FEATURES = [8, 8, 16, 32, 64, 8]  # tests/test_segmentation.py's tiny U-Net
# the network's size and the crop, for inference and training alike (the app's --conf overrides file)
OVERRIDES = {"image_size": 96, "segmentation_features": UNET_FEATURES}


def _load_app_module(name: str):
    """A module of ``monailabel_app/lib`` that needs nothing of MONAI Label, loaded as the app's ``lib.<name>``."""
    spec = importlib.util.spec_from_file_location(f"malignet_label_{name}", ROOT / "monailabel_app/lib" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bundle = _load_app_module("bundle")


def _unet(num_classes: int) -> SemanticSegmenter:
    dense = BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes + 1, features=UNET_FEATURES)
    return SemanticSegmenter(dense, num_classes + 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory, class_map):
    """A served tiny U-Net (random weights) with its chest detector, and a 2-study datastore manifest."""
    from malignet_bundle.engines.chest_detector import train_chest_detector

    root = tmp_path_factory.mktemp("label_networks")
    data, models = root / "data", root / "models"
    write_dataset(data, labeled=1, unlabeled=1, validation=1, test=0, seed=21, progress=False)
    datalist = load_datalist(data / "datalist.json")
    models.mkdir()
    train_chest_detector(datalist, data, class_map, models / "chest_detector.pt", epochs=1, progress=False)
    torch.manual_seed(0)
    torch.save(_unet(class_map.num_classes).state_dict(), models / "model.pt")
    image, label_map = _study_label_map(data, datalist["labeled"], class_map)
    label = write_label_map(label_map, (2.26, 2.26), root / "L1.nii.gz")
    (unlabeled,) = {str(data / item["image"]) for item in datalist["unlabeled"]}
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"labeled": [["L1", image, str(label)]], "unlabeled": [["U1", unlabeled]]}))
    overrides = root / "overrides.json"
    overrides.write_text(json.dumps(OVERRIDES))
    return {"root": root, "models": models, "study": image, "manifest": manifest, "overrides": overrides}


def test_networks_name_their_configs_and_methods():
    assert training_config_files("malignet", CONFIGS) == [CONFIGS / "train.json"]
    assert inference_config_files("malignet", CONFIGS) == [CONFIGS / "inference.json"]  # as before
    assert training_config_files("double_unet", CONFIGS) == [
        CONFIGS / name for name in ("train.json", "segmentation.json", "double_unet.json")
    ]
    assert inference_config_files("unet", CONFIGS) == [
        CONFIGS / name for name in ("train.json", "inference.json", "segmentation.json")
    ]
    assert all(path.is_file() for network in NETWORKS for path in training_config_files(network, CONFIGS))
    assert not is_pixel_level("malignet") and is_pixel_level("unet") and is_pixel_level("double_unet")
    with pytest.raises(ValueError, match="unknown network 'resnet'; choose among malignet, unet, double_unet"):
        training_config_files("resnet", CONFIGS)
    assert default_method("malignet") == "ladder" and default_method("unet") == "supervised"
    # MaligNet's methods are what they were
    mean_teacher = json.loads((CONFIGS / "mean_teacher.json").read_text())
    assert method_overrides("mean_teacher", CONFIGS) == mean_teacher
    assert method_overrides("ladder", CONFIGS) == {} and method_overrides("ladder", CONFIGS, network="malignet") == {}
    # a U-Net: segmentation.json as it is, or the segmentation mean teacher (full weight at once when fine-tuning)
    assert method_overrides("supervised", CONFIGS, network="unet") == {}
    teacher = method_overrides("mean_teacher", CONFIGS, teacher_ready=True, network="double_unet")
    assert teacher["semi_supervised"]["_target_"].endswith("SegmentationMeanTeacher")
    assert teacher["consistency_ramp_up"] == 0 and "mean_teacher_burn_in" not in teacher
    assert method_overrides("mean_teacher", CONFIGS, network="unet")["consistency_ramp_up"] == 1000
    with pytest.raises(ValueError, match="'ladder' needs MaligNet's ladder .* choose among supervised, mean_teacher"):
        check_method("ladder", "unet")
    with pytest.raises(ValueError, match="unknown semi-supervised method 'self_training' for network 'unet'"):
        method_overrides("self_training", CONFIGS, network="unet")


def test_the_app_runner_carries_the_network_of_its_conf(tmp_path):
    app_dir = ROOT / "monailabel_app"
    served = bundle.BundleRunner.from_conf({"network": "unet", "ckpt_dir": str(tmp_path)}, app_dir)
    command = served.command("infer", "--image", "x.dcm")
    assert command[1:3] == [str(ROOT / "scripts" / "label_task.py"), "infer"]
    assert command[command.index("--network") + 1] == "unet" and command[-2:] == ["--image", "x.dcm"]
    train = served.command("train", "--method", "mean_teacher")
    assert train[train.index("--network") + 1] == "unet"
    default = bundle.BundleRunner.from_conf({}, app_dir)
    assert default.network == "malignet" and default.python == str(ROOT / ".venv" / "bin" / "python")
    assert default.command("train")[default.command("train").index("--network") + 1] == "malignet"
    with pytest.raises(ValueError, match="unknown network 'unet3d'"):
        bundle.BundleRunner.from_conf({"network": "unet3d"}, app_dir)


def test_the_app_infer_command_serves_the_unet(store, class_map):
    """The app's infer command, as MaligNetInferTask builds it, run in the bundle's environment on a study."""
    conf = {"network": "unet", "ckpt_dir": str(store["models"]), "overrides": str(store["overrides"])}
    conf |= {"bundle_python": sys.executable, "device": "cpu"}
    runner = bundle.BundleRunner.from_conf(conf, ROOT / "monailabel_app")
    out = store["root"] / "infer"
    # an untrained U-Net at threshold 0: every painted region is a lesion
    args = ["--image", store["study"], "--output_dir", str(out), "--score_threshold", "0.0", "--device", "cpu"]
    printed = json.loads(runner.run("infer", *args).strip().splitlines()[-1])
    result = json.loads((out / "result.json").read_text())
    assert printed == {"lesions": len(result["lesions"]), "output_dir": str(out)}
    frames, rows, columns = result["shape"]
    assert (frames, rows, columns) == (2, 1024, 256)
    label_map = read_label_map(out / "label.nii.gz", (frames, rows, columns))
    assert set(result["label_names"]) == set(class_map.names)
    assert result["lesions"] and all(0.0 <= lesion["score"] <= 1.0 for lesion in result["lesions"])
    assert result["operating_point"]["origin"] == "override"
    # the label map paints the lesions of the list: each lesion's class is in the map, on its view's frame
    frame_of = {view["view"]: view["frame_index"] for view in result["views"]}
    boxed = [lesion for lesion in result["lesions"] if lesion["box"]][:5]
    assert boxed
    for lesion in boxed:
        x0, y0, x1, y1 = lesion["box"]
        window = label_map[frame_of[lesion["view"]], y0:y1, x0:x1]
        assert (window == result["label_names"][lesion["class_name"]]).any(), lesion


def test_weights_of_another_network_are_named_not_listed(store, tmp_path, capsys):
    """A U-Net's model.pt served as a Double U-Net: one line naming model.pt and the network, no key list."""
    overrides = tmp_path / "double.json"
    overrides.write_text(json.dumps({"image_size": 96, "segmentation_features": [8, 16, 32]}))
    with pytest.raises(NetworkMismatchError) as raised:
        infer_study(
            store["study"],
            tmp_path / "direct",
            ROOT,
            store["models"],
            json.loads(overrides.read_text()),
            device="cpu",
            network="double_unet",
        )
    message = str(raised.value)
    assert str(store["models"] / "model.pt") in message and "'double_unet'" in message
    assert "segmentation.json + double_unet.json" in message and "Missing key" not in message
    args = ["infer", "--network", "double_unet", "--image", store["study"], "--output_dir", str(tmp_path / "cli")]
    args += ["--ckpt_dir", str(store["models"]), "--overrides", str(overrides), "--device", "cpu"]
    with pytest.raises(SystemExit) as exited:
        label_task(args)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("label_task infer: ") and "model.pt" in error and "'double_unet'" in error
    assert len(error.splitlines()) == 1 and "Error(s) in loading state_dict" not in error
    assert not (tmp_path / "cli" / "label.nii.gz").exists()


def test_ladder_is_refused_for_a_unet_before_anything_is_written(store, tmp_path, capsys):
    work = tmp_path / "ladder"
    args = ["train", "--network", "unet", "--method", "ladder", "--manifest", str(store["manifest"])]
    args += ["--work_dir", str(work), "--ckpt_dir", str(store["models"])]
    with pytest.raises(SystemExit) as exited:
        label_task(args)
    assert exited.value.code == 2
    assert "'ladder' needs MaligNet's ladder feature pyramid" in capsys.readouterr().err
    assert not work.exists()


def test_train_task_fine_tunes_the_unet_with_the_mean_teacher(store, class_map, capsys):
    """label_task.py train --network unet --method mean_teacher, 1 epoch from the served U-Net."""
    work = store["root"] / "train_mt"
    args = ["train", "--network", "unet", "--method", "mean_teacher", "--manifest", str(store["manifest"])]
    args += ["--work_dir", str(work), "--ckpt_dir", str(store["models"]), "--overrides", str(store["overrides"])]
    args += ["--max_epochs", "1", "--batch_size", "2"]
    label_task(args)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((work / "result.json").read_text())
    assert result["started_from"] == str(store["models"] / "model.pt")
    assert (result["labeled_views"], result["unlabeled_views"]) == (2, 2)
    used = json.loads((work / "overrides.json").read_text())
    assert used["semi_supervised"]["_target_"].endswith("SegmentationMeanTeacher")
    assert used["consistency_ramp_up"] == 0  # the served model teaches at full weight from the first step
    assert used["image_size"] == 96 and used["initial_weights"] == result["started_from"]
    latest = torch.load(work / "models" / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "student"} <= set(latest)  # the mean teacher trained: teacher and student saved
    # served or kept beside the served model, the new weights are a U-Net's of this size
    kept = Path(result["candidate"] or result["model"])
    assert kept.is_file() and (result["candidate"] is None) == result["replaced"]
    _unet(class_map.num_classes).load_state_dict(torch.load(kept, weights_only=True))


def test_train_on_datastore_takes_the_network_by_name(store, tmp_path):
    """An unknown network is refused before a file is written; MaligNet stays the default."""
    manifest = json.loads(store["manifest"].read_text())
    with pytest.raises(ValueError, match="unknown network 'vnet'"):
        train_on_datastore(manifest, tmp_path / "vnet", ROOT, store["models"], network="vnet")
    assert not (tmp_path / "vnet").exists()


def test_fine_tuning_weights_of_another_network_is_refused_by_name(store, tmp_path):
    """A Double U-Net asked to fine-tune from the served U-Net: the error names model.pt, which stays as it was."""
    served = store["models"] / "model.pt"
    before = served.read_bytes()
    with pytest.raises(NetworkMismatchError, match=r"model\.pt: not weights of network 'double_unet'"):
        train_on_datastore(
            json.loads(store["manifest"].read_text()),
            tmp_path / "double",
            ROOT,
            store["models"],
            {"image_size": 96, "segmentation_features": [8, 16, 32]},
            max_epochs=1,
            batch_size=2,
            network="double_unet",
        )
    assert served.read_bytes() == before
    assert not (tmp_path / "double" / "models" / "model.pt").exists()

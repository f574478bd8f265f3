"""The MONAI model zoo's own checks on this bundle: metadata schema, network_def, ckpt_export, properties, ONNX.

The zoo's CI (``ci/verify_bundle.py`` of Project-MONAI/model-zoo) runs MONAI's ``verify_metadata``,
instantiates ``network_def`` from ``inference.json``, exports it with ``ckpt_export`` from ``models/model.pt``
and checks ``ConfigWorkflow`` properties; these tests run the same MONAI functions on tiny networks, for
inference and for every training and evaluation config (``train.json`` alone and with each override file,
``train.json`` + ``evaluate.json`` as the zoo's ``train`` workflow and as an ``eval`` workflow).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata

from malignet_bundle.engines.evaluation import EvaluationReportHandler
from malignet_bundle.engines.trainer import DetectionEvaluator, DetectionInferer, SemiSupervisedTrainer
from malignet_bundle.networks.chest_detector import ChestDetector
from malignet_bundle.networks.export import ONNX_OUTPUTS, MaligNetPredictor, export_onnx, inference_network
from malignet_bundle.networks.malignet import MaligNet

from .conftest import ROOT

CONFIGS = ROOT / "configs"
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # source named in tests/data/README.md
# the smallest networks that still have every part (global features, RPN, box and mask heads)
TINY = {
    "backbone": "resnet18",
    "pyramid_channels": 16,
    "representation_size": 32,
    "global_channels": 8,
    "image_size": 64,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "box_detections_per_img": 5,
}
# the packages the bundle pins that are tools of development, not of the bundle at run time
DEV_TOOLS = {"pytest", "pytest-xdist", "execnet", "ruff", "jsonschema"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_metadata_passes_the_zoo_schema_and_states_the_pinned_versions(tmp_path):
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata downloads the schema unless it is already there
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema))
    broken = copy.deepcopy(meta)
    del broken["numpy_version"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="numpy_version"):  # the check is not vacuous
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))

    pins = _pins()
    stated = {
        "monai": meta["monai_version"],
        "torch": meta["pytorch_version"],
        "numpy": meta["numpy_version"],
        **{name.lower(): version for name, version in meta["required_packages_version"].items()},
    }
    assert {name: stated.get(name) for name in pins if name not in DEV_TOOLS} == {
        name: version for name, version in pins.items() if name not in DEV_TOOLS
    }
    # every runtime dependency of pyproject.toml is stated, at the version the pins install
    for requirement in importlib.metadata.requires("malignet-bundle") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(">", 1)[0].split("=", 1)[0].split("<", 1)[0].strip().lower()
        assert name in stated, name
    assert meta["supported_apps"] == {"monailabel": "0.8.5"}
    assert "monailabel==0.8.5" in (ROOT / "requirements-label.txt").read_text()
    assert isinstance(meta["eval_metrics"]["model"], str) and "trained" in meta["eval_metrics"]["model"]


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser["bundle_root"] = str(ROOT)
    for key, value in {**{f"network_def#{k}": v for k, v in TINY.items()}, **overrides}.items():
        parser[key] = value
    return parser


def test_network_def_takes_its_classes_from_the_metadata_id_in_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: nothing may be read relative to the working directory
    parser = _parser(score_threshold=0.5)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MaligNetPredictor)
    assert net.roi_heads.box_predictor.cls_score.out_features == 5  # background + the 4 classes of metadata.json
    assert net.roi_heads.score_thresh == 0.5

    parser = _parser(score_threshold=0.5)
    parser["_meta_#network_data_format#outputs#pred#channel_def"] = {"0": "background", "1": "malignant", "2": "x"}
    assert parser.get_parsed_content("network_def").roi_heads.box_predictor.cls_score.out_features == 3
    assert parser.get_parsed_content("class_map").names == ["malignant", "x"]


def test_inference_properties_of_configworkflow(synthetic_dataset, tmp_path):
    study = sorted((synthetic_dataset / "studies").glob("*.dcm"))[0]
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(ROOT),
        ckpt_dir=str(tmp_path),
        input=str(study),
        score_threshold=0.5,
        load_pretrain=False,  # no model.pt here: the properties are checked, nothing is run
        **{f"network_def#{k}": v for k, v in TINY.items()},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, DetectionEvaluator)
    assert len(workflow.dataset) == 1 and workflow.dataset.data[0]["items"][0]["image"] == str(study)
    assert workflow.version == json.loads((CONFIGS / "metadata.json").read_text())["version"]


def test_train_json_network_def_takes_its_classes_from_the_metadata_id_in_any_working_directory(tmp_path, monkeypatch):
    """``network_def`` of the training and evaluation configs: the class count is ``@_meta_``'s ``channel_def``."""
    monkeypatch.chdir(tmp_path)  # bundle_root stays ".": no configs/metadata.json here to read
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.read_meta(str(CONFIGS / "metadata.json"))  # as ConfigWorkflow and `monai.bundle run` do
    for key, value in TINY.items():
        parser[f"network_def#{key}"] = value
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MaligNet)
    assert net.roi_heads.box_predictor.cls_score.out_features == 5  # background + the 4 classes of metadata.json
    parser["_meta_#network_data_format#outputs#pred#channel_def"] = {"0": "background", "1": "malignant", "2": "x"}
    assert parser.get_parsed_content("network_def").roi_heads.box_predictor.cls_score.out_features == 3
    assert parser.get_parsed_content("class_map").names == ["malignant", "x"]

    # a bare ConfigParser without metadata (scripts, tests) reads metadata.json under bundle_root, not here
    bare = ConfigParser()
    bare.read_config(str(CONFIGS / "train.json"))
    bare["bundle_root"] = str(ROOT)
    assert bare.get_parsed_content("class_map").num_classes == 4


@pytest.fixture(scope="module")
def workflow_inputs(synthetic_dataset, tmp_path_factory) -> dict[str, str]:
    """Paths every training and evaluation workflow needs: data, a chest detector, a self-training teacher."""
    root = tmp_path_factory.mktemp("zoo_workflows")
    torch.manual_seed(0)
    # untrained weights: the unlabeled views get the detector's whole-view fallback, enough to build datasets
    torch.save(ChestDetector().state_dict(), root / "chest_detector.pt")
    torch.save(MaligNet(num_classes=5, **TINY).state_dict(), root / "teacher.pt")
    return {
        "bundle_root": str(ROOT),
        "dataset_dir": str(synthetic_dataset),
        "chest_detector_path": str(root / "chest_detector.pt"),
        "pretrained_checkpoint": str(root / "teacher.pt"),
        "output_dir": str(root / "runs"),
    }


# (workflow type, configs merged in order): train.json alone and with each override file, and the evaluation
# as the zoo checks it (a `train` workflow over train.json + evaluate.json) and as an `eval` workflow
WORKFLOWS = [
    ("train", ["train.json"]),
    ("train", ["train.json", "baseline.json"]),
    ("train", ["train.json", "self_training.json"]),
    ("train", ["train.json", "mean_teacher.json"]),
    ("train", ["train.json", "baseline.json", "mean_teacher.json"]),
    ("train", ["train.json", "cpu.json"]),
    ("train", ["train.json", "evaluate.json"]),
    ("eval", ["train.json", "evaluate.json"]),
    ("eval", ["train.json", "cpu.json", "evaluate.json"]),
]


@pytest.mark.parametrize("workflow_type, configs", WORKFLOWS, ids=["+".join(c) + f"-{t}" for t, c in WORKFLOWS])
def test_training_and_evaluation_configs_have_every_property(workflow_inputs, tmp_path, workflow_type, configs):
    """``ConfigWorkflow.check_properties()``: no required property missing, no optional one under a wrong ID."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        ckpt_dir=str(tmp_path),
        epochs=1,
        image_size=64,
        cache_rate=0.0,  # build the datasets, load nothing
        device="$torch.device('cpu')",
        pseudo_keep_empty=True,  # the self-training teacher is untrained: keep its empty scans
        **workflow_inputs,
        **{f"network_def#{k}": v for k, v in TINY.items()},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    evaluation = "evaluate.json" in configs
    test_views = 2  # the synthetic dataset's one test study, two views
    if workflow_type == "train":
        assert isinstance(workflow.trainer, SemiSupervisedTrainer) and workflow.max_epochs == 1
        assert isinstance(workflow.train_inferer, DetectionInferer)
        assert workflow.trainer.inferer is workflow.train_inferer
        assert workflow.trainer.network.roi_heads.box_predictor.cls_score.out_features == 5
        # the validator the training's ValidationHandler runs; with evaluate.json, the evaluation's evaluator
        assert isinstance(workflow.evaluator, DetectionEvaluator)
        validated = workflow.evaluator.data_loader.dataset
        assert len(validated) == (test_views if evaluation else 2)  # the validation split: one study too
        if evaluation:
            assert workflow.evaluator is workflow.parser.get_parsed_content("evaluator")
    else:
        assert isinstance(workflow.evaluator, DetectionEvaluator) and isinstance(workflow.inferer, DetectionInferer)
        assert workflow.evaluator.data_loader.dataset is workflow.dataset and len(workflow.dataset) == test_views
        assert all(item["image"].endswith(".dcm") for item in workflow.dataset_data)
        assert list(workflow.key_metric) == ["test_mean_f1"] and workflow.evaluator.inferer is workflow.inferer
        assert any(isinstance(handler, EvaluationReportHandler) for handler in workflow.handlers)

    if configs == ["train.json"]:  # the check is not vacuous: without train#inferer it names the property
        del workflow.parser["train"]["inferer"]
        with pytest.raises(KeyError, match="train_inferer"):
            workflow.check_properties()


@pytest.mark.parametrize(
    "size_configs, sizes",
    [
        (["cpu.json"], {"image_size": 96, "rpn_post_nms_top_n_test": 50}),  # ResNet-18, 64-channel pyramid
        ([], {"image_size": 96, "rpn_post_nms_top_n_test": 50}),  # the thesis size: ResNet-50, 256 channels
    ],
    ids=["cpu", "thesis"],
)
def test_ckpt_export_scripts_the_inference_network_from_model_pt(tmp_path, size_configs, sizes):
    """MONAI's ``ckpt_export`` of ``network_def`` from a training's ``model.pt``, for each network size."""
    configs = [str(CONFIGS / "inference.json"), *(str(CONFIGS / name) for name in size_configs)]
    merged = ConfigParser()
    merged.read_config(configs)
    # the configs' literal network arguments (references and expressions are the bundle's to resolve)
    network_args = {
        k: v for k, v in merged["network_def"].items() if k != "_target_" and not str(v).startswith(("$", "@"))
    }
    network_args = {**network_args, **sizes}
    torch.manual_seed(0)
    trained = MaligNet(num_classes=5, **network_args)  # a training's network: ladder decoders included
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    # what `python -m monai.bundle ckpt_export network_def --config_file ...` calls, in this process
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=configs,
        bundle_root=str(ROOT),
        ckpt_dir=str(tmp_path),
        score_threshold=0.0,
        **{f"network_def#{k}": v for k, v in sizes.items()},
    )

    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert (
        json.loads(extra["metadata.json"])["version"] == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    )
    assert not any("decoders" in name for name, _ in scripted.named_parameters())
    eager = inference_network(num_classes=5, box_score_thresh=0.0, **network_args)
    eager.load_state_dict(trained.state_dict())
    image = [torch.rand(1, 160, 48, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected, got = eager(image)[0], scripted(image)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(got[key], expected[key])


def test_onnx_export_matches_pytorch_on_onnxruntime_also_without_detections(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    trained = MaligNet(num_classes=5, box_score_thresh=0.0, **TINY)
    net = inference_network(num_classes=5, box_score_thresh=0.0, **TINY)
    net.load_state_dict(trained.state_dict())
    generator = torch.Generator().manual_seed(3)
    busy, quiet = torch.rand(1, 128, 48, generator=generator), torch.full((1, 96, 40), 0.5)
    with torch.no_grad():
        top = [float(net([image])[0]["scores"].max()) for image in (busy, quiet)]
    assert abs(top[0] - top[1]) > 1e-3, top  # precondition: a threshold between them exists
    # a threshold between the two images' best scores: one image with detections, one without
    net.roi_heads.score_thresh = sum(top) / 2
    with_detections, without = (busy, quiet) if top[0] > top[1] else (quiet, busy)
    export_onnx(net, tmp_path / "malignet.onnx", with_detections)
    session = ort.InferenceSession(str(tmp_path / "malignet.onnx"), providers=["CPUExecutionProvider"])
    counts = []
    for image in (with_detections, without):
        outputs = dict(zip(ONNX_OUTPUTS, session.run(None, {"image": image.numpy()}), strict=True))
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in net([image])[0].items()}
        counts.append(len(expected["scores"]))
        for key in ("boxes", "labels", "scores", "masks"):
            assert outputs[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(outputs["labels"], expected["labels"])
        np.testing.assert_allclose(outputs["boxes"], expected["boxes"], atol=1e-3)
        np.testing.assert_allclose(outputs["scores"], expected["scores"], atol=1e-5)
        np.testing.assert_allclose(outputs["masks"], expected["masks"], atol=1e-4)
    assert counts[0] > 0 and counts[1] == 0

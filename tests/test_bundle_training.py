"""Training through the MONAI bundle runner, on tiny synthetic data (real configs, real code paths)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.chest_detector import train_chest_detector
from malignet_bundle.networks.malignet import MaligNet

from .conftest import ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, class_map):
    from malignet_bundle.data.synthesize import write_dataset

    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root / "data", labeled=2, unlabeled=2, validation=1, test=1, seed=21, progress=False)
    datalist = load_datalist(root / "data" / "datalist.json")
    # one corrupt unlabeled scan among the good ones: training must skip it, not stop
    (root / "data" / "studies" / "corrupt.dcm").write_bytes(b"\x00not dicom" * 64)
    datalist["unlabeled"].append({"image": "studies/corrupt.dcm", "view": "anterior", "patient_id": "BROKEN"})
    (root / "data" / "datalist.json").write_text(json.dumps(datalist))
    train_chest_detector(datalist, root / "data", class_map, root / "chest.pt", epochs=2, batch_size=4, progress=False)
    return root


def _free_port() -> int:
    """A free port on 127.0.0.1: a fixed one may still be held by an earlier run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(
    tiny,
    name: str,
    *configs: str,
    epochs: int = 1,
    batch_size: int = 2,
    extra: tuple = (),
    launcher: tuple = (sys.executable, "-m"),
    env: dict | None = None,
    run_id: str = "training",
) -> subprocess.CompletedProcess:
    """``monai.bundle run <run_id>`` on the tiny dataset; ``launcher`` runs the module (python -m, torchrun)."""
    files = [str(ROOT / "configs" / c) for c in configs]
    command = [
        *launcher,
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        str(files),
        "--logging_file",
        str(ROOT / "configs" / "logging.conf"),
        "--bundle_root",
        str(ROOT),
        "--dataset_dir",
        str(tiny / "data"),
        "--ckpt_dir",
        str(tiny / name),
        "--chest_detector_path",
        str(tiny / "chest.pt"),
        "--epochs",
        str(epochs),
        "--image_size",
        "96",
        "--batch_size",
        str(batch_size),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=tiny, timeout=900, env=env)


def test_train_json_trains_malignet_semi_supervised(tiny):
    tracking = ("--tracking", "mlflow", "--output_dir", str(tiny / "eval"))
    result = _train(tiny, "malignet", "train.json", extra=tracking)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "loss_ladder" in log and "val_mean_f1" in log
    assert "skipping unlabeled item" in log and "corrupt.dcm" in log
    # MLflow's local store (MONAI's default: SQLite beside the artifacts) holds every loss curve
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny / 'eval' / 'mlruns.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert {"train_loss", "epoch_loss", "train_loss_ladder", "train_loss_mask", "val_mean_f1"} <= set(run.data.metrics)
    assert {"learning_rate", "batch_size", "noise_ratio", "ladder", "max_epochs"} <= set(run.data.params)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "model.pt" in artifacts  # the best checkpoint
    assert any(a.startswith("config_") for a in artifacts)  # the executed config
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 2 and all(m.value > 0 for m in history)  # one point per iteration
    state = torch.load(tiny / "malignet" / "model.pt", weights_only=True)
    assert any(k.startswith("backbone.fpn.decoders") for k in state)
    MaligNet(image_size=96).load_state_dict(state)
    latest = torch.load(tiny / "malignet" / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "lr_scheduler"} <= set(latest)
    assert latest["trainer"]["iteration"] == latest["trainer"]["epoch_length"]  # one full epoch
    # run again with two epochs: it resumes from the saved epoch instead of starting over
    again = _train(tiny, "malignet", "train.json", epochs=2)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    assert "Restored all variables" in log and "epoch 1 until 2 epochs" in log
    assert (tiny / "malignet" / "latest_checkpoint_epoch=2.pt").is_file()


def test_baseline_json_trains_plain_mask_rcnn(tiny):
    result = _train(tiny, "baseline", "train.json", "baseline.json")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "loss_ladder" not in log and "loss_mask" in log
    state = torch.load(tiny / "baseline" / "model.pt", weights_only=True)
    MaligNet(image_size=96, ladder=False, global_features=False).load_state_dict(state)


def test_evaluate_json_writes_the_report_and_logs_to_mlflow(tiny):
    from mlflow.tracking import MlflowClient

    (tiny / "evaluate").mkdir()
    torch.manual_seed(0)
    torch.save(MaligNet(image_size=96).state_dict(), tiny / "evaluate" / "model.pt")
    out = tiny / "evaluate_out"
    extra = ("--tracking", "mlflow", "--output_dir", str(out), "--network_def#box_score_thresh", "0.0")
    result = _train(tiny, "evaluate", "train.json", "evaluate.json", extra=extra, run_id="evaluating")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "Restored all variables from" in log and "model.pt" in log
    report = out / "evaluation"
    written = {"metrics.json", "per_image.csv", "confusion_matrix.png", "froc.png", "f1_threshold.png", "metrics.md"}
    assert written <= {p.name for p in report.iterdir()}
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["detail"]["images"] == 2  # the test split: one study, two views
    assert len((report / "per_image.csv").read_text().splitlines()) == 3
    assert "Table 4" in (report / "metrics.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert {"test_mean_f1", "test_ap", "test_froc_cpm", "test_metastasis_patient_f1"} <= set(run.data.metrics)
    assert metrics["metrics"]["test_mean_f1"] == pytest.approx(run.data.metrics["test_mean_f1"])
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert {"metrics.json", "froc.png"} <= set(artifacts)
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)  # the executed config


def test_bad_datalists_stop_with_what_is_wrong(tiny):
    result = _train(tiny, "bad", "train.json", extra=("--data_list_file_path", str(tiny / "nowhere.json")))
    assert result.returncode != 0
    assert "nowhere.json: datalist not found" in result.stdout + result.stderr
    datalist = load_datalist(tiny / "data" / "datalist.json")
    datalist["labeled"] = []
    (tiny / "empty_labeled.json").write_text(json.dumps(datalist))
    result = _train(tiny, "bad", "train.json", extra=("--data_list_file_path", str(tiny / "empty_labeled.json")))
    assert result.returncode != 0
    assert "the labeled split of the datalist is empty" in result.stdout + result.stderr


def test_multi_gpu_config_runs_two_processes_with_gloo(tiny):
    """torchrun with 2 CPU processes: DDP over gloo, distributed samplers, only rank 0 logs and saves."""
    launcher = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
    )
    result = _train(tiny, "ddp", "train.json", "multi_gpu_train.json", batch_size=1, launcher=launcher)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # 4 labeled views, 2 ranks, batch 1: 2 iterations per rank, logged by rank 0 only
    iterations = [line for line in log.splitlines() if "Epoch: 1/1, Iter:" in line]
    assert iterations and all("/2 --" in line for line in iterations), log[-4000:]  # sharded: 2, not 4
    state = torch.load(tiny / "ddp" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    MaligNet(image_size=96).load_state_dict(state)


def test_mlflow_tracking_server_receives_the_run(tiny):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend), reached through MLFLOW_TRACKING_URI."""
    import os
    import signal
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    port = _free_port()
    server_dir = tiny / "mlflow_server"
    server_dir.mkdir()
    server_log = open(server_dir / "server.log", "wb")  # a file, not a pipe that could fill and stall it
    server = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mlflow") if (ROOT / ".venv" / "bin" / "mlflow").exists() else "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{server_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(server_dir / "artifacts"),
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=server_dir,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (server_dir / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not become ready in 120 s"
            time.sleep(1)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        result = _train(
            tiny,
            "served",
            "train.json",
            env=env,
            extra=("--output_dir", str(tiny / "served_out"), "--tracking", "mlflow"),
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("malignet")
        (run,) = client.search_runs([experiment.experiment_id])
        assert {"train_loss", "train_loss_ladder", "val_mean_f1"} <= set(run.data.metrics)
        assert not (tiny / "served_out" / "mlruns.db").exists()  # nothing went to the local store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        server_log.close()


def test_self_training_json_trains_on_labeled_plus_pseudo_labeled(tiny):
    import re

    teacher = tiny / "teacher.pt"
    torch.manual_seed(5)
    torch.save(MaligNet(image_size=96).state_dict(), teacher)
    result = _train(
        tiny,
        "self_training",
        "train.json",
        "self_training.json",
        # an untrained teacher detects nothing at 0.85: keep those scans (as all-background) to get a student
        extra=("--pretrained_checkpoint", str(teacher), "--pseudo_level", "lesion", "--pseudo_keep_empty", "True"),
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    found = re.search(r"pseudo-labels \(lesion level, score >= 0.85\): (\d+) of (\d+) images kept", log)
    assert found, log[-4000:]
    kept, seen = int(found.group(1)), int(found.group(2))
    assert kept == seen == 4  # every image kept (2 unlabeled studies, the corrupt file skipped)
    assert re.search(r"\d+ images without detections kept", log), log[-4000:]
    # the trainer iterates over labeled + pseudo-labeled views: (4 + 4) / batch 2
    assert "Iter: 4/4" in log

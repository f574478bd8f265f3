"""Training through the MONAI bundle runner, on tiny synthetic data (real configs, real code paths)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch

from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.chest_detector import train_chest_detector
from malignet_bundle.networks.malignet import MaligNet

from .conftest import ROOT, bundle_command


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
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _drop_each_tests_runs(request):
    """Delete what a test of this module wrote into ``tiny`` once it is over, whatever its outcome.

    Each test trains its own runs (checkpoints of 0.2-0.55 GB); kept to the end of the module they
    add up to several GB. No test reads another's runs.
    """
    if "tiny" not in request.fixturenames:
        yield
        return
    root = request.getfixturevalue("tiny")
    before = set(root.iterdir())
    yield
    for path in set(root.iterdir()) - before:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _free_port() -> int:
    """A free port on 127.0.0.1: a fixed one may still be held by an earlier run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_launcher(processes: int = 2) -> tuple[str, ...]:
    """``python -m torch.distributed.run`` with ``processes`` local processes on a free port."""
    return (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(_free_port()),
    )


def _train(tiny, name: str, *configs: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run :func:`_command` to the end, output captured as text."""
    command = bundle_command(tiny, name, *configs, **kwargs)
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
    # the zoo's command: `run` without a run id runs the id "run" (the Makefile's `run evaluating` is the same)
    result = _train(tiny, "evaluate", "train.json", "evaluate.json", extra=extra, run_id="run")
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
    log = result.stdout + result.stderr
    assert "empty_labeled.json" in log and "the 'labeled' split is empty" in log


def test_multi_gpu_config_runs_two_processes_with_gloo(tiny):
    """torchrun with 2 CPU processes: DDP over gloo, distributed samplers, only rank 0 logs and saves."""
    launcher = (*torchrun_launcher(), "-m")
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


# the smoke profile's network: the mean-teacher run below tests wiring, not learning
TINY_NETWORK = (
    "--network_def#backbone",
    "resnet18",
    "--network_def#pyramid_channels",
    "16",
    "--network_def#representation_size",
    "32",
    "--network_def#global_channels",
    "16",
)


def test_mean_teacher_json_trains_malignet_with_both_costs_and_serves_the_teacher(tiny):
    """train.json + mean_teacher.json: ladder and teacher costs, the unsupervised loss in MLflow, model = teacher."""
    from mlflow.tracking import MlflowClient

    out = tiny / "mean_teacher_out"
    extra = ("--tracking", "mlflow", "--output_dir", str(out), "--mean_teacher_burn_in", "1", *TINY_NETWORK)
    result = _train(tiny, "mean_teacher", "train.json", "mean_teacher.json", extra=extra)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "burn-in over after 1 iterations" in log and "loss_unsupervised" in log and "loss_ladder" in log
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    wanted = {"train_loss_unsupervised", "train_loss_ladder", "train_pseudo_lesions", "train_loss_mask_pseudo"}
    assert wanted | {"val_mean_f1"} <= set(run.data.metrics)
    # iteration 1 is burn-in (0), iteration 2 learns from the teacher's crops
    assert run.data.metrics["train_loss_unsupervised"] > 0
    assert run.data.params["semi_supervised"] == "MeanTeacher" and run.data.params["ema_decay"] == "0.9996"
    latest = torch.load(tiny / "mean_teacher" / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "student", "optimizer", "trainer"} <= set(latest)
    model = torch.load(tiny / "mean_teacher" / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], latest["model"][k]) for k in model)  # model.pt is the teacher
    assert any(not torch.equal(latest["model"][k], latest["student"][k]) for k in model)
    network = {TINY_NETWORK[i].split("#")[1]: TINY_NETWORK[i + 1] for i in range(0, len(TINY_NETWORK), 2)}
    network = {k: v if k == "backbone" else int(v) for k, v in network.items()}
    MaligNet(image_size=96, **network).load_state_dict(model)


def _start(tiny, name: str, epochs: int, log_path, extra: tuple = ()) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller through the process's lifetime
    return subprocess.Popen(
        bundle_command(tiny, name, "train.json", epochs=epochs, extra=("--val_interval", "1", *extra)),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tiny,
    )


def _kill_when(process: subprocess.Popen, condition, what: str, hang_guard_s: float = 900.0) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds (polled every few ms); fail if it exits first."""
    import signal
    import time

    deadline = time.monotonic() + hang_guard_s
    while not condition():
        assert process.poll() is None, f"training ended (rc {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {hang_guard_s} s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_mid_epoch_and_mid_write_resumes_from_the_newest_complete_checkpoint(tiny):
    """Real SIGKILLs, several in a row: mid-epoch, while a checkpoint is written, while model.pt is written.

    Each restart with the same command resumes from the newest complete checkpoint, losing at most the epoch
    in progress, with no manual clean-up; a finished run refuses to train 0 epochs; --resume false archives.
    """
    from malignet_bundle.atomic_io import TEMP_PREFIX
    from malignet_bundle.engines.checkpoint import read_checkpoint_state

    ckpt = tiny / "killed"
    epochs = 4
    logs = tiny / "killed_logs"
    logs.mkdir()

    def latest() -> list:
        return sorted(p.name for p in ckpt.glob("latest_checkpoint_*.pt") if not p.name.startswith(TEMP_PREFIX))

    def writing(name_part: str):
        """True once a new temporary file (not one a previous kill left) for ``name_part`` appears."""
        leftovers = set(ckpt.glob(f"{TEMP_PREFIX}*"))
        return lambda: any(name_part in p.name for p in set(ckpt.glob(f"{TEMP_PREFIX}*")) - leftovers)

    # 1. killed mid-epoch 2: an iteration of epoch 2 has been logged, its checkpoint not yet begun
    run = _start(tiny, "killed", epochs, logs / "1.log")
    _kill_when(run, lambda: f"Epoch: 2/{epochs}, Iter: 1/" in (logs / "1.log").read_text(), "an iteration of epoch 2")
    assert latest() == ["latest_checkpoint_epoch=1.pt"]
    assert (ckpt / "model.pt").is_file()

    # 2. resumed from epoch 1; killed while writing the epoch-2 checkpoint
    run = _start(tiny, "killed", epochs, logs / "2.log")
    _kill_when(run, writing("latest_checkpoint_epoch=2"), "the epoch-2 checkpoint write")
    log = (logs / "2.log").read_text()
    assert "resuming from" in log and "latest_checkpoint_epoch=1.pt (epoch 1 of 4" in log, log[-3000:]
    assert latest() == ["latest_checkpoint_epoch=1.pt"]  # the half-written epoch 2 never took its name
    assert read_checkpoint_state(ckpt / "latest_checkpoint_epoch=1.pt").epoch == 1

    # 3. again from epoch 1 (one epoch lost), the killed write's temporary file cleared; killed at the same place
    run = _start(tiny, "killed", epochs, logs / "3.log")
    _kill_when(run, writing("latest_checkpoint_epoch=2"), "the epoch-2 checkpoint write, again")
    log = (logs / "3.log").read_text()
    assert "latest_checkpoint_epoch=1.pt (epoch 1 of 4" in log and "incomplete write" in log, log[-3000:]
    assert latest() == ["latest_checkpoint_epoch=1.pt"]
    MaligNet(image_size=96).load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))

    # 4. a stale checkpoint from an older run beside the real ones changes nothing: newest by recorded epoch
    import shutil

    shutil.copyfile(ckpt / "latest_checkpoint_epoch=1.pt", ckpt / "latest_checkpoint_epoch=0.pt")
    (ckpt / "latest_checkpoint_epoch=9.pt").write_bytes((ckpt / "latest_checkpoint_epoch=1.pt").read_bytes()[:5000])
    run = _start(tiny, "killed", epochs, logs / "4.log")
    assert run.wait(timeout=900) == 0, (logs / "4.log").read_text()[-4000:]
    log = (logs / "4.log").read_text()
    assert "skipping damaged checkpoint" in log and "latest_checkpoint_epoch=9.pt" in log
    assert "(epoch 1 of 4, iteration 2)" in log  # the newest complete state: epoch 1 (both copies record it)
    assert latest() == ["latest_checkpoint_epoch=4.pt"]  # stale, damaged and superseded files are gone
    assert read_checkpoint_state(ckpt / "latest_checkpoint_epoch=4.pt").epoch == 4
    assert not list(ckpt.glob(f"{TEMP_PREFIX}*"))

    # 5. the same command on the finished run: refuses to train 0 epochs, and says what to do
    finished = _train(tiny, "killed", "train.json", epochs=epochs)
    assert finished.returncode != 0
    assert "holds a finished run" in finished.stderr + finished.stdout and "--resume false" in finished.stderr

    # 6. --resume false starts over and moves the earlier run aside instead of deleting or mixing it
    fresh = _train(tiny, "killed", "train.json", epochs=1, extra=("--resume", "false"))
    assert fresh.returncode == 0, (fresh.stdout + fresh.stderr)[-4000:]
    (archive,) = (ckpt / "previous_runs").iterdir()
    assert {"latest_checkpoint_epoch=4.pt", "model.pt"} <= {p.name for p in archive.iterdir()}
    assert latest() == ["latest_checkpoint_epoch=1.pt"]


def test_sigkill_while_writing_model_pt_leaves_the_previous_one_intact(tiny):
    """A training's first validation always writes model.pt; killed during that write, the old file survives."""
    from malignet_bundle.atomic_io import TEMP_PREFIX

    ckpt = tiny / "killed_best"
    ckpt.mkdir()
    torch.manual_seed(3)
    torch.save(MaligNet(image_size=96).state_dict(), ckpt / "model.pt")
    before = (ckpt / "model.pt").read_bytes()
    run = _start(tiny, "killed_best", 1, tiny / "killed_best.log")
    _kill_when(run, lambda: any(p.name.endswith(".model.pt") for p in ckpt.glob(f"{TEMP_PREFIX}*")), "a model.pt write")
    assert (ckpt / "model.pt").read_bytes() == before


def test_cpu_json_is_one_network_for_train_baseline_evaluate_and_inference(tiny):
    """configs/cpu.json (the CPU-sized network) merges after any config; what train writes, the others load."""
    runs = tiny / "cpu_runs"
    trained = _train(tiny, "cpu", "train.json", "cpu.json")
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    cpu = json.loads((ROOT / "configs" / "cpu.json").read_text())
    network = {k.split("#", 1)[1]: v for k, v in cpu.items() if k.startswith("network_def#")}
    state = torch.load(tiny / "cpu" / "model.pt", weights_only=True)
    MaligNet(image_size=96, **network).load_state_dict(state)  # ResNet-18, 64-channel pyramid, …
    assert state["backbone.fpn.layer_blocks.0.0.weight"].shape[0] == cpu["network_def#pyramid_channels"]

    # with the forward under bfloat16 autocast, the CPU speed option (docs/BENCHMARKS.md): finite losses; and
    # cosine_schedule.json (the demo's schedule), whose learning rate reaches 0 at the last step (2 here)
    extra = ("--bf16_on_cpu", "true", "--warmup_iterations", "1")
    schedule = ("cpu.json", "cosine_schedule.json")
    baseline = _train(tiny, "cpu_baseline", "train.json", "baseline.json", *schedule, extra=extra)
    log = baseline.stdout + baseline.stderr
    assert baseline.returncode == 0, log[-4000:]
    losses = [float(v) for v in re.findall(r"-- loss: (\S+)", log)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    latest = torch.load(tiny / "cpu_baseline" / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert latest["lr_scheduler"]["last_epoch"] == 2 and latest["lr_scheduler"]["_last_lr"] == [0.0]
    # training on with more epochs would replay the finished schedule (climbing back to the full rate): refused
    longer = _train(tiny, "cpu_baseline", "train.json", "baseline.json", *schedule, epochs=2, extra=extra)
    assert longer.returncode != 0
    assert "t_total 2 in the checkpoint, 4 configured" in longer.stdout + longer.stderr
    MaligNet(image_size=96, ladder=False, global_features=False, **network).load_state_dict(
        torch.load(tiny / "cpu_baseline" / "model.pt", weights_only=True)
    )

    extra = ("--output_dir", str(runs), "--network_def#box_score_thresh", "0.0")
    evaluated = _train(tiny, "cpu", "train.json", "evaluate.json", "cpu.json", extra=extra, run_id="evaluating")
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    assert json.loads((runs / "evaluation" / "metrics.json").read_text())["detail"]["images"] == 2

    extra = ("--output_dir", str(runs / "inference"), "--score_threshold", "0.0", "--progress", "false")
    inferred = _train(tiny, "cpu", "inference.json", "cpu.json", extra=extra, run_id="inferring")
    assert inferred.returncode == 0, (inferred.stdout + inferred.stderr)[-4000:]
    summary = json.loads((runs / "inference" / "summary.json").read_text())
    assert len(summary["written"]) == 1 and not summary["skipped"]

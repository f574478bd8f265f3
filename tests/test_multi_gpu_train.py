"""multi_gpu_train.json under torchrun keeps what train.json's ``initialize`` does.

Two CPU processes over gloo (as a GPU run over NCCL would, minus the devices): ``--initial_weights`` is
loaded before the first step, and ``--tracking mlflow`` uploads the executed config to the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from malignet_bundle.networks.chest_detector import ChestDetector
from malignet_bundle.networks.malignet import MaligNet

from .conftest import bundle_command
from .test_bundle_training import TINY_NETWORK, torchrun_launcher

IMAGE_SIZE = 96  # what test_bundle_training's command gives --image_size
NETWORK = {TINY_NETWORK[i].split("#")[1]: TINY_NETWORK[i + 1] for i in range(0, len(TINY_NETWORK), 2)}
NETWORK = {k: v if k == "backbone" else int(v) for k, v in NETWORK.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two labeled studies (4 views: 2 steps of batch 1 per rank), one unlabeled, one validation study."""
    from malignet_bundle.data.synthesize import write_dataset

    root = tmp_path_factory.mktemp("multi_gpu")
    write_dataset(root / "data", labeled=2, unlabeled=1, validation=1, test=1, seed=31, progress=False)
    # untrained weights: unlabeled views take the detector's whole-view fallback, enough for the wiring
    torch.manual_seed(0)
    torch.save(ChestDetector().state_dict(), root / "chest.pt")
    return root


def test_two_gloo_processes_load_initial_weights_and_upload_the_executed_config(small):
    import subprocess

    from mlflow.tracking import MlflowClient

    torch.manual_seed(11)  # not the bundle's seed 0: these weights differ from the network it would build
    initial = MaligNet(image_size=IMAGE_SIZE, **NETWORK).state_dict()
    torch.save(initial, small / "initial.pt")
    torch.manual_seed(0)
    seed_0 = MaligNet(image_size=IMAGE_SIZE, **NETWORK).state_dict()
    parameters = [name for name, _ in MaligNet(image_size=IMAGE_SIZE, **NETWORK).named_parameters()]
    assert not torch.equal(initial["backbone.body.conv1.weight"], seed_0["backbone.body.conv1.weight"])

    out = small / "runs"
    extra = (
        *("--initial_weights", str(small / "initial.pt")),
        # learning rate 0: the optimizer steps leave every parameter as loaded (batch-norm statistics still move)
        *("--learning_rate", "0"),
        *("--tracking", "mlflow", "--output_dir", str(out)),
        *TINY_NETWORK,
    )
    launcher = (*torchrun_launcher(), "-m")
    command = bundle_command(
        small, "ddp", "train.json", "multi_gpu_train.json", batch_size=1, launcher=launcher, extra=extra
    )
    result = subprocess.run(command, capture_output=True, text=True, cwd=small, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert [line for line in log.splitlines() if "Epoch: 1/1, Iter: 2/2" in line], log[-4000:]  # steps were taken

    latest = torch.load(small / "ddp" / "latest_checkpoint_epoch=1.pt", weights_only=True)["model"]
    model = torch.load(small / "ddp" / "model.pt", weights_only=True)
    for state in (latest, model):
        assert not any(name.startswith("module.") for name in state)
        unchanged = [name for name in parameters if torch.equal(state[name], initial[name])]
        assert unchanged == parameters, sorted(set(parameters) - set(unchanged))[:5]

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert {"train_loss", "val_mean_f1"} <= set(run.data.metrics)  # rank 0 logged the training
    assert float(run.data.params["learning_rate"]) == 0.0
    (config_artifact,) = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.startswith("config_")]
    downloaded = client.download_artifacts(run.info.run_id, config_artifact, str(small))
    executed = json.loads(Path(downloaded).read_text())  # the config this run executed: train.json merged ...
    assert executed["initial_weights"] == str(small / "initial.pt")  # ... with the command line ...
    assert executed["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"  # ... and this file

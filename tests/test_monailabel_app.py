"""The MONAI Label app on a real server: `monailabel start_server` on 127.0.0.1, REST calls as 3D Slicer makes them.

The server runs from MONAI Label's own environment (`make label` creates `.venv-label`); it hands each
request to this environment's interpreter (the bundle's), and the test talks to it over HTTP only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import pytest
import requests

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.nm_dicom import read_nm_views
from malignet_bundle.data.synthesize import write_dataset
from malignet_bundle.engines.chest_detector import train_chest_detector
from malignet_bundle.outputs.label_map import read_label_map, write_label_map

from .conftest import ROOT

MONAILABEL = Path(os.environ.get("MONAILABEL_BIN", ROOT / ".venv-label" / "bin" / "monailabel"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not MONAILABEL.is_file(),
        reason=f"MONAI Label is not installed ({MONAILABEL} missing): run `make label`",
    ),
]

# a CPU-sized MaligNet (the cpu benchmark profile's network), for inference and training alike
OVERRIDES = {
    "image_size": 192,
    "network_def#backbone": "resnet18",
    "network_def#pyramid_channels": 64,
    "network_def#representation_size": 256,
    "network_def#global_channels": 128,
    "network_def#anchor_sizes": [[5], [10], [19], [38], [77]],
    # training only: a short warm-up and few validations, for a model that learns its studies in minutes
    "warmup_iterations": 5,
    "val_interval": 25,
    "train#latest_checkpoint#save_interval": 25,
}
TRAIN_EPOCHS = 100  # one iteration each: 2 labeled studies, 4 views, batch 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outward_address() -> str | None:
    """The address this machine would use to reach other hosts (a UDP connect sends nothing), if any."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def _study_label_map(dataset_dir: Path, items: list[dict], class_map) -> tuple[str, np.ndarray]:
    """The ground truth of one study as the class label map an annotator would save."""
    image = str(dataset_dir / items[0]["image"])
    nm = read_nm_views(image)
    label_map = np.zeros((len(nm.frames), *nm.frames[0].shape), np.uint8)
    for item in items:
        index = nm.views.index(item["view"])
        annotation = load_annotation(dataset_dir / item["label"], nm.frames[index].shape, view=item["view"])
        for mask, name in zip(annotation.masks, annotation.class_names, strict=True):
            label_map[index][mask] = class_map.label(name)
    return image, label_map


@pytest.fixture(scope="module")
def server(tmp_path_factory, class_map):
    root = tmp_path_factory.mktemp("label")
    data = root / "data"
    # seed 0: every annotated study has lesions (12, 2, 24 over both views); the last one is the train task's
    # validation split, and a validation study without lesions cannot tell a trained epoch from an early one
    write_dataset(data, labeled=3, unlabeled=2, validation=1, test=0, seed=0, progress=False)
    datalist = load_datalist(data / "datalist.json")
    models = root / "models"
    models.mkdir()
    train_chest_detector(datalist, data, class_map, models / "chest_detector.pt", epochs=4, progress=False)
    studies = root / "studies"  # the server's datastore writes beside the images: give it copies
    shutil.copytree(data / "studies", studies)
    overrides = root / "overrides.json"
    overrides.write_text(json.dumps(OVERRIDES))
    by_study: dict[str, list[dict]] = {}
    for item in datalist["labeled"]:
        by_study.setdefault(Path(item["image"]).name.removesuffix(".dcm"), []).append(item)
    truth = {sid: _study_label_map(data, items, class_map)[1] for sid, items in by_study.items()}

    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    command = [str(MONAILABEL), "start_server", "--app", str(ROOT / "monailabel_app"), "--studies", str(studies)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--conf", "ckpt_dir", str(models)]
    command += ["--conf", "overrides", str(overrides), "--conf", "work_dir", str(root / "train_runs")]
    command += ["--conf", "bundle_python", sys.executable]
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions"), "PYTHONUNBUFFERED": "1"}
    (root / "tmp").mkdir()
    env["TMPDIR"] = str(root / "tmp")  # the server's temporary files, to see that it leaves none behind
    env["PATH"] = f"{MONAILABEL.parent}{os.pathsep}{env.get('PATH', '')}"  # its launcher runs `python` from PATH
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, root / "server.log")
        yield {
            "url": url,
            "root": root,
            "models": models,
            "studies": studies,
            "truth": truth,
            "log": root / "server.log",
            "tmp": root / "tmp",
        }
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def wait_until_serving(process: subprocess.Popen, url: str, log: Path, hang_guard_s: float = 300.0) -> None:
    """Return once ``url``/info/ answers 200; fail with the server's log if it exits or hangs first."""
    deadline = time.monotonic() + hang_guard_s  # a hang guard: the server imports torch and MONAI first
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {hang_guard_s:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(2)


def _log_tail(server: dict) -> str:
    return server["log"].read_text()[-4000:]


def test_server_binds_loopback_and_lists_the_app(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert info["name"] == "MaligNet"
    assert info["labels"]["malignant"] == 1 and len(info["labels"]) == 4
    assert "malignet" in info["trainers"]
    assert info["models"] == {}  # no weights yet: the infer task is not offered
    datastore = requests.get(f"{server['url']}/datastore/?output=stats", timeout=30).json()
    assert datastore["total"] == 6
    host = server["url"].split("//")[1].split(":")[0]
    assert host == "127.0.0.1"
    external = _outward_address()
    if external is not None:  # the same port on the machine's outward address refuses
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((external, int(server["url"].rsplit(":", 1)[1]))) != 0


def test_save_labels_train_then_infer_on_the_study(server):
    url, truth = server["url"], server["truth"]
    for study_id, label_map in truth.items():
        path = write_label_map(label_map, (2.26, 2.26), server["root"] / f"{study_id}_final.nii.gz")
        with open(path, "rb") as f:
            saved = requests.put(
                f"{url}/datastore/label",
                params={"image": study_id, "tag": "final"},
                files={"label": (path.name, f, "application/gzip")},
                timeout=60,
            )
        assert saved.status_code == 200, saved.text
    # from scratch, long enough to find the lesions of the studies it was trained on
    params = {"max_epochs": TRAIN_EPOCHS, "batch_size": 4, "from_scratch": True, "validation_fraction": 0.2}
    started = requests.post(f"{url}/train/malignet", json=params, timeout=60)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 900
    while True:
        status = requests.get(f"{url}/train/", params={"check_if_running": False}, timeout=30).json()
        if status.get("status") in ("DONE", "ERROR"):
            break
        assert time.monotonic() < deadline, f"training did not finish in 15 min:\n{_log_tail(server)}"
        time.sleep(5)
    assert status["status"] == "DONE", f"{status}\n{_log_tail(server)}"
    assert (server["models"] / "model.pt").is_file()
    # the train status says what became of the new model, and why (no model was served before it)
    results = [line for line in status["details"] if "Result:" in line]
    assert results and '"replaced": true' in results[-1] and "no model was served" in results[-1], status
    assert not list(server["models"].glob("model_candidate_*"))
    runs = list((server["root"] / "train_runs").glob("*/datalist.json"))
    assert runs, "the train task wrote no datalist"
    datalist = load_datalist(max(runs, key=lambda p: p.stat().st_mtime))
    assert len(datalist["unlabeled"]) == 6  # both views of the three studies nobody labeled

    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "malignet" in info["models"]  # served as soon as the weights exist
    # the training study with the most lesion pixels (the last study in id order was held out for validation)
    study_id = max(sorted(truth)[:-1], key=lambda s: int((truth[s] > 0).sum()))
    response = requests.post(
        f"{url}/infer/malignet",
        params={"image": study_id, "output": "all"},
        data={"params": json.dumps({"score_threshold": 0.1})},  # a 100-step model: low confidence
        timeout=300,
    )
    assert response.status_code == 200, f"{response.text[:2000]}\n{_log_tail(server)}"
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    )
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    result = json.loads(parts["params"].get_content())
    label_file = server["root"] / "inferred.nii.gz"
    label_file.write_bytes(parts["image"].get_payload(decode=True))

    expected = truth[study_id]
    label_map = read_label_map(label_file, expected.shape)  # raises unless it has the study's shape
    assert result["shape"] == list(expected.shape)
    lesions = result["lesions"]
    assert lesions, f"no lesion at score >= 0.1: {json.dumps(result)[:500]}"
    # each lesion's box lies in its view's frame, and the lesions found fall on the study's lesions
    views = {v["view"]: v for v in result["views"]}
    hits = 0
    for lesion in lesions:
        frame = views[lesion["view"]]["frame_index"]
        x0, y0, x1, y1 = lesion["box"]
        assert 0 <= x0 < x1 <= expected.shape[2] and 0 <= y0 < y1 <= expected.shape[1]
        window = expected[frame, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        hits += bool(window.any())
    assert hits >= max(1, len(lesions) // 2), f"{hits} of {len(lesions)} lesions on ground truth"
    assert ((label_map > 0) & (expected > 0)).any()  # the painted map overlaps the study's lesions

    # without a threshold the served model's own (chosen on validation when it was trained, model.json) is used
    response = requests.post(f"{url}/infer/malignet", params={"image": study_id, "output": "json"}, timeout=300)
    assert response.status_code == 200, f"{response.text[:2000]}\n{_log_tail(server)}"
    operating_point = response.json()["operating_point"]
    assert operating_point["origin"] == "validation", operating_point
    refused = requests.post(
        f"{url}/infer/malignet",
        params={"image": study_id, "output": "json"},
        data={"params": json.dumps({"score_threshold": "high"})},
        timeout=60,
    )
    assert refused.status_code == 400 and "score_threshold must be a number" in refused.text

    # every infer's working folder is gone with its response, and each label file once it was sent
    assert not list(server["tmp"].glob("malignet_infer_*"))
    deadline = time.monotonic() + 60  # MONAI Label removes a sent file in a task after the response
    while list(server["tmp"].glob("malignet_label_*")) and time.monotonic() < deadline:
        time.sleep(1)
    assert not list(server["tmp"].glob("malignet_label_*"))

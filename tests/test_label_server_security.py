"""A datastore nobody escapes: the MONAI Label app's checks, on a real server and on their own.

The server tests start `monailabel start_server` from MONAI Label's environment over a few synthetic studies
and talk to it over HTTP only: every traversal id or tag, absolute path, study overwrite and malformed label
is refused with a 4xx naming the reason, and the filesystem around the datastore and the work folder is
byte-for-byte what it was. A server started without `--host` refuses to start and never listens. The
model-replacement rule is tested where it lives, `train_on_datastore`, with a small CPU network.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.nm_dicom import read_nm_views
from malignet_bundle.data.synthesize import write_dataset
from malignet_bundle.outputs.label_map import read_label_map, write_label_map

from .conftest import ROOT
from .test_monailabel_app import (
    MONAILABEL,
    OVERRIDES,
    _free_port,
    _outward_address,
    _study_label_map,
    wait_until_serving,
)

needs_monailabel = pytest.mark.skipif(
    not MONAILABEL.is_file(), reason=f"MONAI Label is not installed ({MONAILABEL} missing): run `make label`"
)


def _load_safety():
    """The app's checks (``monailabel_app/lib/safety.py``), which need nothing of MONAI Label to import."""
    spec = importlib.util.spec_from_file_location("malignet_label_safety", ROOT / "monailabel_app/lib/safety.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


safety = _load_safety()

UNSAFE_IDS = ["../x", "../../etc/passwd", "a/b", "..", ".", "/etc/passwd", "a\\b", "..\\x", ".hidden", "C:x", "a\x00b"]


# ---- the checks on their own -------------------------------------------------------------------------------


@pytest.mark.parametrize("study_id", [*UNSAFE_IDS, "", None, 7, "x" * 201])
def test_unsafe_study_ids_are_refused_with_400_and_why(study_id):
    with pytest.raises(safety.Refused) as refused:
        safety.check_study_id(study_id)
    assert refused.value.status == 400 and refused.value.reason


@pytest.mark.parametrize("study_id", ["SYN00001", "P 0001", "1.2.840.10008.1", "a-b_c", "x" * 200])
def test_plain_study_ids_pass_as_they_are(study_id):
    assert safety.check_study_id(study_id) == study_id


@pytest.mark.parametrize("tag", ["../x", "a/b", "..", ".", "/final", "final/../..", "", "fi nal", "fin.al", None])
def test_unsafe_tags_are_refused(tag):
    with pytest.raises(safety.Refused, match="label tag") as refused:
        safety.check_tag(tag)
    assert refused.value.status == 400


@pytest.mark.parametrize("tag", ["final", "original", "reviewer_2", "AI-draft"])
def test_word_tags_pass(tag):
    assert safety.check_tag(tag) == tag


def test_paths_must_resolve_inside_their_root(tmp_path):
    root = tmp_path / "studies"
    root.mkdir()
    (root / "P1.dcm").write_bytes(b"x")
    assert safety.check_inside(root, "P1.dcm") == (root / "P1.dcm").resolve()
    (root / "link.dcm").symlink_to(tmp_path / "elsewhere.dcm")  # a study that is a link out of the folder
    for name in ("../x", "link.dcm", "", ".", str(tmp_path / "x"), "labels/../../x"):
        with pytest.raises(safety.Refused, match="outside the datastore folder"):
            safety.check_inside(root, name)


@pytest.mark.parametrize(
    ("argv", "host"),
    [
        ([], None),
        (["--app", "a", "--studies", "s", "--port", "8000"], None),
        (["--conf", "host", "x", "--port", "1"], None),  # an app option named host is not the server's
        (["--host", "127.0.0.1"], "127.0.0.1"),
        (["--host=0.0.0.0"], "0.0.0.0"),
        (["-i", "10.0.0.5"], "10.0.0.5"),
        (["-i0.0.0.0"], "0.0.0.0"),
        (["--ho", "::1"], "::1"),  # argparse's prefix matching, as MONAI Label's own parser does it
    ],
)
def test_explicit_host_tells_a_given_host_from_none(argv, host):
    assert safety.explicit_host(argv) == host


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One synthetic two-view study and its (frames, rows, columns)."""
    root = tmp_path_factory.mktemp("one_study")
    write_dataset(root, labeled=1, unlabeled=0, validation=1, test=0, seed=3, progress=False)
    image = sorted((root / "studies").glob("*.dcm"))[0]
    nm = read_nm_views(image)
    return image, (len(nm.frames), *nm.frames[0].shape)


def _nifti(path: Path, columns_rows_frames: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(columns_rows_frames, np.eye(4)), str(path))
    return path


def test_label_files_are_checked_as_the_bundle_reads_them(study, tmp_path):
    image, shape = study
    assert safety.study_shape(image) == shape
    classes = [1, 2, 3, 4]
    good = np.zeros(shape, np.uint8)
    good[0, 100:110, 50:60] = 1
    good[1, 200:210, 80:90] = 4
    accepted = write_label_map(good, (2.0, 2.0), tmp_path / "good.nii.gz")
    safety.check_label_file(accepted, shape, classes)
    assert np.array_equal(read_label_map(accepted, shape), good)  # what passes, the bundle reads
    as_float = _nifti(tmp_path / "float.nii", good.transpose(2, 1, 0).astype(np.float32))
    safety.check_label_file(as_float, shape, classes)

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(os.urandom(2000)))
    wrong_shape = write_label_map(good[:, :-1], (2.0, 2.0), tmp_path / "short.nii.gz")
    unknown = good.copy()
    unknown[0, 0, 0] = 7
    unknown_class = write_label_map(unknown, (2.0, 2.0), tmp_path / "seven.nii.gz")
    fraction = _nifti(tmp_path / "half.nii", np.full(good.transpose(2, 1, 0).shape, 0.5, np.float32))
    for path, reason in [
        (garbage, "not a readable NIfTI file"),
        (wrong_shape, "does not match the study's"),
        (unknown_class, r"class values \[7\] that the class map does not have"),
        (fraction, "whole class ids"),
    ]:
        with pytest.raises(safety.Refused, match=reason) as refused:
            safety.check_label_file(path, shape, classes)
        assert refused.value.status == 422
    for path in (garbage, wrong_shape, fraction):  # the bundle refuses them too, later
        with pytest.raises(ValueError):
            read_label_map(path, shape)
    with pytest.raises(safety.Refused, match="not a readable DICOM") as refused:
        safety.study_shape(garbage)
    assert refused.value.status == 422


# ---- the real server ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every path under ``root`` → its kind, and for files their SHA-256 (links are not followed)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[key] = f"link:{os.readlink(path)}"
        elif path.is_file():
            tree[key] = _sha256(path)
        else:
            tree[key] = "dir" if path.is_dir() else "other"
    return tree


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """The paths added, removed or changed between two :func:`_tree` walks."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _start_server(root: Path, studies: Path, work: Path, port: int, host: str | None) -> subprocess.Popen:
    """``monailabel start_server`` over ``studies``; its temporary files and sessions go to ``work``."""
    command = [str(MONAILABEL), "start_server", "--app", str(ROOT / "monailabel_app"), "--studies", str(studies)]
    if host is not None:
        command += ["--host", host]
    command += ["--port", str(port), "--conf", "ckpt_dir", str(work / "models")]
    command += ["--conf", "work_dir", str(work / "train_runs"), "--conf", "bundle_python", sys.executable]
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(work / "sessions"), "PYTHONUNBUFFERED": "1"}
    env["TMPDIR"] = str(work / "tmp")  # where MONAI Label spools uploads: inside the walked tree
    env["PATH"] = f"{MONAILABEL.parent}{os.pathsep}{env.get('PATH', '')}"  # its launcher runs `python` from PATH
    log = open(root / f"server_{port}.log", "w")  # noqa: SIM115 - the server's lifetime
    return subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # root/a/b/{studies,work}: a traversal of a few '../' from either folder still lands inside root
    root = tmp_path_factory.mktemp("guard")
    write_dataset(root / "data", labeled=2, unlabeled=1, validation=1, test=0, seed=7, progress=False)
    box = root / "a" / "b"
    studies, work = box / "studies", box / "work"
    shutil.copytree(root / "data" / "studies", studies)
    (work / "models").mkdir(parents=True)
    port = _free_port()
    process = _start_server(root, studies, work, port, host="127.0.0.1")
    url, log = f"http://127.0.0.1:{port}", root / f"server_{port}.log"
    try:
        wait_until_serving(process, url, log)
        yield {"url": url, "root": root, "studies": studies, "work": work, "log": log, "port": port}
    finally:
        _stop(process)


def _upload(url: str, route: str, params: dict, field: str, name: str, content: bytes) -> requests.Response:
    return requests.put(f"{url}{route}", params=params, files={field: (name, content)}, timeout=60)


def _valid_label(studies: Path, study_id: str, tmp: Path) -> bytes:
    nm = read_nm_views(studies / f"{study_id}.dcm")
    label_map = np.zeros((len(nm.frames), *nm.frames[0].shape), np.uint8)
    label_map[0, 300:310, 100:110] = 2
    return write_label_map(label_map, (2.26, 2.26), tmp / f"{study_id}_label.nii.gz").read_bytes()


@pytest.mark.slow
@needs_monailabel
def test_traversals_and_bad_uploads_are_refused_and_nothing_is_touched(server, tmp_path):
    url, root, studies, work = server["url"], server["root"], server["studies"], server["work"]
    marker = f"escape-{uuid.uuid4().hex[:8]}"  # the name every traversal tries to create
    ids = sorted(p.stem for p in studies.glob("*.dcm"))
    study_id = ids[0]
    dicom = (studies / f"{study_id}.dcm").read_bytes()
    label = _valid_label(studies, study_id, tmp_path)
    nm = read_nm_views(studies / f"{study_id}.dcm")
    shape = (len(nm.frames), *nm.frames[0].shape)
    short = write_label_map(np.zeros((shape[0], shape[1] - 1, shape[2]), np.uint8), (2.0, 2.0), tmp_path / "s.nii.gz")
    seven = np.zeros(shape, np.uint8)
    seven[1, 10:20, 10:20] = 7
    seven = write_label_map(seven, (2.0, 2.0), tmp_path / "seven.nii.gz")
    study_sums = {p.name: _sha256(p) for p in studies.glob("*.dcm")}
    skip = (server["log"],)
    before = _tree(root, skip)

    def put_image(params: dict, name: str, content: bytes) -> requests.Response:
        return _upload(url, "/datastore/image", params, "file", name, content)

    def put_label(params: dict, content: bytes, name: str = "l.nii.gz") -> requests.Response:
        return _upload(url, "/datastore/label", params, "label", name, content)

    def get(route: str, **params: str) -> requests.Response:
        return requests.get(f"{url}{route}", params=params, timeout=60)

    def infer(image: str, **form: str) -> requests.Response:
        return requests.post(f"{url}/infer/malignet", params={"image": image}, data=form, timeout=60)

    bad_ids = [f"../../{marker}", f"../../../../{marker}", f"a/{marker}", "..", f"/tmp/{marker}", f"..\\{marker}"]
    id_reasons = ("path separator", "'..'", "absolute path")
    tag_reasons = ("label tag",)
    refusals = []  # (response, expected status, words one of which the reason must contain)
    for bad in bad_ids:
        removed = requests.delete(f"{url}/datastore/label", params={"id": bad, "tag": "final"}, timeout=60)
        refusals += [
            (put_image({"image": bad}, "study.dcm", dicom), 400, id_reasons),
            (put_label({"image": bad, "tag": "final"}, label), 400, id_reasons),
            (get("/datastore/image", image=bad), 400, id_reasons),
            (infer(bad), 400, id_reasons),
            (removed, 400, id_reasons),
        ]
    for tag in [f"../../{marker}", f"../../../../../{marker}", "a/b", "..", f"/tmp/{marker}"]:
        refusals += [
            (put_label({"image": study_id, "tag": tag}, label), 400, tag_reasons),
            (get("/datastore/label", label=study_id, tag=tag), 400, tag_reasons),
        ]
    final = {"image": study_id, "tag": "final"}
    refusals += [
        # a study is never replaced, and only DICOM files are studies
        (put_image({"image": study_id}, "x.dcm", dicom[:-10] + b"0" * 10), 409, ("never replaced",)),
        (put_image({"image": "NEW1"}, "x.dcm", os.urandom(3000)), 422, ("not a readable DICOM",)),
        (put_image({"image": "datastore_v2"}, "x.json", b"{}"), 415, (".dcm file is expected",)),
        # labels: a NIfTI map of the study's shape holding class ids of the class map, of a study that exists
        (put_label(final, os.urandom(4000)), 422, ("not a readable NIfTI",)),
        (put_label(final, short.read_bytes()), 422, ("does not match the study's",)),
        (put_label(final, seven.read_bytes()), 422, ("class values [7]",)),
        (put_label(final, label, name="l.dcm"), 415, (".nii.gz or .nii file is expected",)),
        (put_label({"image": "NOPE", "tag": "final"}, label), 404, ("not in the datastore",)),
        # infer reads only the datastore's studies: not a path, not an unknown id, not one smuggled in params
        (infer("/etc/passwd"), 400, ("absolute path",)),
        (infer(str(studies / f"{study_id}.dcm")), 400, ("absolute path",)),
        (infer("NOPE"), 404, ("not in the datastore",)),
        (infer(study_id, params=json.dumps({"image": "/etc/passwd"})), 400, ("absolute path",)),
        (get("/datastore/image", image="/etc/passwd"), 400, ("absolute path",)),
    ]
    for response, status, reasons in refusals:
        where = f"{response.request.method} {response.request.url}"
        assert response.status_code == status, f"{where}: {response.status_code} {response.text[:500]}"
        detail = response.json()["detail"]
        assert any(reason in detail for reason in reasons), f"{where}: {detail}"

    # nothing was written, changed or removed under root: no refused upload is left in the server's temp
    # folder either (work/tmp, where MONAI Label spools uploads and keeps its start-up log config)
    after = _tree(root, skip)
    assert after == before, _changed(before, after)
    assert {p.name: _sha256(p) for p in studies.glob("*.dcm")} == study_sums  # (the tree has them too)
    # and no traversal reached a folder above it
    for folder in [root.parent, root.parent.parent, Path("/tmp")]:
        assert not [p for p in folder.iterdir() if marker in p.name], folder

    # the door opens for what is right: a valid label lands in labels/final and nowhere else
    spooled = {p.name for p in (work / "tmp").iterdir()}
    saved = _upload(url, "/datastore/label", final, "label", "l.nii.gz", label)
    assert saved.status_code == 200, saved.text
    stored = studies / "labels" / "final" / f"{study_id}.nii.gz"
    assert stored.read_bytes() == label
    status = requests.get(f"{url}/datastore/?output=stats", timeout=30).json()
    assert status["completed"] == 1
    deadline = time.monotonic() + 60  # MONAI Label removes the spooled upload after answering: a hang guard
    while spooled != {p.name for p in (work / "tmp").iterdir()} and time.monotonic() < deadline:
        time.sleep(0.5)
    changed = _changed(before, _tree(root, skip))
    assert changed == {"a/b/studies/labels/final/" + stored.name, "a/b/studies/datastore_v2.json"}, changed
    assert {p.name: _sha256(p) for p in studies.glob("*.dcm")} == study_sums


@pytest.mark.slow
@needs_monailabel
def test_uploaded_weights_and_infer_uploads_are_refused(server):
    url, models = server["url"], server["work"] / "models"
    response = requests.put(f"{url}/model/malignet", files={"file": ("model.pt", b"weights")}, timeout=60)
    assert response.status_code == 403 and "not worse on validation" in response.json()["detail"]
    assert not (models / "model.pt").exists()
    study = sorted(server["studies"].glob("*.dcm"))[0]
    response = requests.post(
        f"{url}/infer/malignet", files={"file": ("x.dcm", study.read_bytes())}, timeout=60
    )  # an uploaded image is not a datastore study
    assert response.status_code == 400, response.text
    assert "give the id of a study in the datastore" in response.json()["detail"]


@pytest.mark.slow
@needs_monailabel
def test_server_with_explicit_loopback_is_not_on_the_network(server):
    external = _outward_address()
    if external is None:
        pytest.skip("this machine has no outward address to probe")
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((external, server["port"])) != 0


@pytest.mark.slow
@needs_monailabel
def test_server_without_host_refuses_to_start_and_never_listens(tmp_path):
    studies, work = tmp_path / "studies", tmp_path / "work"
    write_dataset(tmp_path / "data", labeled=1, unlabeled=0, validation=1, test=0, seed=5, progress=False)
    shutil.copytree(tmp_path / "data" / "studies", studies)
    port = _free_port()
    process = _start_server(tmp_path, studies, work, port, host=None)
    external = _outward_address()
    addresses = ["127.0.0.1"] + ([external] if external else [])
    try:
        deadline = time.monotonic() + 300  # a hang guard
        while process.poll() is None:
            for address in addresses:  # while it starts, nothing answers on the port, on any address
                with socket.socket() as probe:
                    probe.settimeout(1)
                    assert probe.connect_ex((address, port)) != 0, f"listening on {address}:{port}"
            assert time.monotonic() < deadline, "the server neither started nor exited in 300 s"
            time.sleep(0.5)
    finally:
        _stop(process)
    log = (tmp_path / f"server_{port}.log").read_text()
    assert process.returncode != 0, log[-3000:]
    assert "no --host given" in log and "--host 127.0.0.1" in log, log[-3000:]
    assert "Uvicorn running on" not in log


# ---- the model replacement rule ----------------------------------------------------------------------------

SERVED_EPOCHS = 40  # one iteration each (one study, two views, batch 2): enough to find some of its lesions


@pytest.mark.slow
def test_a_worse_fine_tune_is_kept_beside_the_served_model(tmp_path, class_map):
    from malignet_bundle.engines.chest_detector import train_chest_detector
    from malignet_bundle.engines.label_tasks import train_on_datastore

    data, models = tmp_path / "data", tmp_path / "models"
    # seed 0's first study has three lesions inside the chest of each view, for a served model that finds some
    write_dataset(data, labeled=1, unlabeled=0, validation=1, test=0, seed=0, progress=False)
    datalist = load_datalist(data / "datalist.json")
    models.mkdir()
    train_chest_detector(datalist, data, class_map, models / "chest_detector.pt", epochs=2, progress=False)
    image, label_map = _study_label_map(data, datalist["labeled"], class_map)
    label = write_label_map(label_map, (2.26, 2.26), tmp_path / "S1.nii.gz")
    manifest = {"labeled": [["S1", image, str(label)]], "unlabeled": []}  # one study: validated on itself
    overrides = {**OVERRIDES, "val_interval": SERVED_EPOCHS // 4, "train#latest_checkpoint#save_interval": 10}

    def train(name: str, epochs: int, learning_rate: float) -> dict:
        return train_on_datastore(
            manifest,
            tmp_path / name,
            ROOT,
            models,
            {**overrides, "val_interval": min(epochs, overrides["val_interval"])},
            max_epochs=epochs,
            batch_size=2,
            learning_rate=learning_rate,
            from_scratch=True,
        )

    first = train("first", SERVED_EPOCHS, 0.001)
    assert first["replaced"] is True and first["candidate"] is None and first["served_val_mean_f1"] is None
    assert "no model was served" in first["decision"]
    served = models / "model.pt"
    assert first["val_mean_f1"] > 0, f"the served model must find lesions for this test: {first}"
    served_sum = _sha256(served)

    # a fine-tune that learns nothing (learning rate 0): the network as initialised, which finds nothing
    worse = train("worse", 1, 0.0)
    assert worse["val_mean_f1"] < worse["served_val_mean_f1"] == pytest.approx(first["val_mean_f1"])
    assert worse["replaced"] is False
    assert _sha256(served) == served_sum  # the served model is byte-identical
    candidate = Path(worse["candidate"])
    assert candidate.parent == models and candidate.name.startswith("model_candidate_") and candidate.is_file()
    assert _sha256(candidate) == _sha256(tmp_path / "worse" / "models" / "model.pt")
    assert "was not replaced" in worse["decision"] and "worse than the served model's" in worse["decision"]
    assert candidate.name in worse["decision"]
    assert json.loads((tmp_path / "worse" / "result.json").read_text()) == worse

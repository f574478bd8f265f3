from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ import as modules in tests


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-frame synthetic dataset shared by the read-only tests."""
    from malignet_bundle.data.synthesize import write_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(out, labeled=4, unlabeled=2, validation=1, test=1, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def class_map():
    from malignet_bundle.data.class_map import ClassMap

    return ClassMap.from_metadata(ROOT / "configs" / "metadata.json")


def run_script(name: str, *args: object, check: bool = False):
    """Run ``scripts/<name>.py`` with this interpreter from the repository root; output captured as text."""
    import subprocess

    command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=check)


def bundle_command(
    tiny,
    name: str,
    *configs: str,
    epochs: int = 1,
    batch_size: int = 2,
    extra: tuple = (),
    launcher: tuple = (sys.executable, "-m"),
    run_id: str = "training",
) -> list[str]:
    """``monai.bundle run <run_id>`` of ``configs`` (names in ``configs/``) on a tiny dataset.

    ``tiny`` holds the dataset (``data/``) and its chest detector (``chest.pt``); the run's checkpoints go to
    ``tiny/<name>``; ``launcher`` runs the module (python -m, torchrun).
    """
    files = [str(ROOT / "configs" / c) for c in configs]
    return [
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


@pytest.fixture
def colliding_folder(tmp_path: Path) -> Path:
    """A folder of two single-view files of one study (same StudyInstanceUID) without any view cue.

    The NM reader's frame-order fallback takes each for anterior, so as one study they collide: what a
    vendor's one-file-per-view export without view codes gives.
    """
    import pydicom

    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.data.synthesize import synthesize_study, write_study

    root = tmp_path / "dataset"
    class_map = ClassMap.from_metadata(ROOT / "configs" / "metadata.json")
    items = write_study(synthesize_study([11, 2], "PAIR"), root, class_map, layout="single")
    folder = tmp_path / "collide"
    folder.mkdir()
    for item in items:
        ds = pydicom.dcmread(root / item["image"])
        for keyword in ("DetectorInformationSequence", "ImageID", "SeriesDescription"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(folder / f"{item['view']}_copy.dcm", enforce_file_format=True)
    return folder

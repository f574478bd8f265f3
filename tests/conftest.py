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

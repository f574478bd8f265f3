"""The bundle's environment as MONAI Label sees it: one subprocess per request, files in and out."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleRunner:
    """Runs ``scripts/label_task.py`` with the bundle's interpreter.

    Args:
        bundle_root: the bundle checkout.
        python: the bundle environment's interpreter.
        ckpt_dir: folder of ``model.pt`` and ``chest_detector.pt``.
        overrides: JSON file of bundle config overrides, or None.
        device: ``cuda``/``cpu``, or None for the bundle's default.
    """

    bundle_root: Path
    python: str
    ckpt_dir: Path
    overrides: str | None = None
    device: str | None = None

    def weights_ready(self) -> bool:
        """Whether both the MaligNet and the chest-detector weights exist."""
        return (self.ckpt_dir / "model.pt").is_file() and (self.ckpt_dir / "chest_detector.pt").is_file()

    def run(self, task: str, *args: str, stream: bool = False) -> str:
        """Run ``label_task.py <task> <args>``; returns its standard output, raises with its log on failure.

        With ``stream`` its output goes straight to the server's (a training shows its progress there, and
        in MONAI Label's train status) and nothing is returned.
        """
        command = [self.python, str(self.bundle_root / "scripts" / "label_task.py"), task]
        command += ["--bundle_root", str(self.bundle_root), "--ckpt_dir", str(self.ckpt_dir)]
        if self.overrides:
            command += ["--overrides", self.overrides]
        command += list(args)
        logger.info("bundle: %s", " ".join(command))
        done = subprocess.run(command, capture_output=not stream, text=True, cwd=self.bundle_root)
        if done.returncode != 0:
            log = "see the log above" if stream else done.stderr[-4000:]
            raise RuntimeError(f"bundle {task} failed (exit {done.returncode}): {log}")
        return done.stdout or ""

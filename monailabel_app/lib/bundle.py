"""The bundle's environment as MONAI Label sees it: one subprocess per request, files in and out.

Only the standard library (and the bundle's standard-library-only ``malignet_bundle.networks.selection``) is
imported, so the bundle's environment can build and test the app's commands without MONAI Label.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from malignet_bundle.networks.selection import DEFAULT_NETWORK, check_network

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
        network: the network ``model.pt`` holds, one of :data:`~malignet_bundle.networks.selection.NETWORKS`
            (``malignet``, ``unet``, ``double_unet``); every infer and train request runs with it.

    Raises:
        ValueError: for an unknown network, when the runner is made (the app then refuses to start).
    """

    bundle_root: Path
    python: str
    ckpt_dir: Path
    overrides: str | None = None
    device: str | None = None
    network: str = DEFAULT_NETWORK

    def __post_init__(self) -> None:
        check_network(self.network)

    @classmethod
    def from_conf(cls, conf: Mapping[str, str], app_dir: str | Path) -> BundleRunner:
        """The runner the app serves with, from its ``--conf`` options (``monailabel_app/main.py`` lists them).

        Args:
            conf: MONAI Label's conf: ``bundle_root``, ``bundle_python``, ``ckpt_dir``, ``overrides``, ``device``,
                ``network``; each optional.
            app_dir: the app's folder (the bundle is its parent unless ``bundle_root`` says otherwise).

        Raises:
            ValueError: for an unknown ``network``.
        """
        bundle_root = Path(conf.get("bundle_root", Path(app_dir).resolve().parent)).resolve()
        return cls(
            bundle_root=bundle_root,
            python=conf.get("bundle_python") or str(bundle_root / ".venv" / "bin" / "python"),
            ckpt_dir=Path(conf.get("ckpt_dir", bundle_root / "models")).resolve(),
            overrides=conf.get("overrides") or None,
            device=conf.get("device") or None,
            network=conf.get("network") or DEFAULT_NETWORK,
        )

    def weights_ready(self) -> bool:
        """Whether both the served network's and the chest-detector weights exist."""
        return (self.ckpt_dir / "model.pt").is_file() and (self.ckpt_dir / "chest_detector.pt").is_file()

    def command(self, task: str, *args: str) -> list[str]:
        """The command line of ``label_task.py <task> <args>``: this runner's bundle, weights and network first.

        Args:
            task: ``infer`` or ``train``.
            args: the task's own arguments.
        """
        command = [self.python, str(self.bundle_root / "scripts" / "label_task.py"), task]
        command += ["--bundle_root", str(self.bundle_root), "--ckpt_dir", str(self.ckpt_dir)]
        command += ["--network", self.network]
        if self.overrides:
            command += ["--overrides", self.overrides]
        return command + list(args)

    def run(self, task: str, *args: str, stream: bool = False) -> str:
        """Run ``label_task.py <task> <args>``; returns its standard output, raises with its log on failure.

        With ``stream`` its output goes straight to the server's (a training shows its progress there, and
        in MONAI Label's train status) and nothing is returned.

        Raises:
            RuntimeError: the task failed; its exit status and the end of its log (with ``stream``, the log is
                the server's), e.g. that ``model.pt`` is another network's than this runner's.
        """
        command = self.command(task, *args)
        logger.info("bundle: %s", " ".join(command))
        done = subprocess.run(command, capture_output=not stream, text=True, cwd=self.bundle_root)
        if done.returncode != 0:
            log = "see the log above" if stream else done.stderr[-4000:]
            raise RuntimeError(f"bundle {task} failed (exit {done.returncode}): {log}")
        return done.stdout or ""

"""Checkpoints that survive any kill, and a resume that picks the newest complete one.

MONAI's ``CheckpointSaver`` (through ignite's ``Checkpoint``) first deletes the previous file and then
writes the new one in place, non-atomically: a kill during that write leaves a truncated checkpoint and no
complete one, and the same path can destroy the best ``model.pt``. :class:`SafeCheckpointSaver` keeps
MONAI's saver (its events, naming, key-metric logic) and swaps only its disk writer for
:class:`AtomicDiskSaver`, which writes each file atomically (:mod:`malignet_bundle.atomic_io`) and removes
the previous one only once the new one is complete.

:func:`prepare_resume` chooses what a training in a ``ckpt_dir`` resumes from: the newest *complete*
``latest_checkpoint_*.pt`` by the epoch and iteration it records (never by file-listing order), skipping
and naming damaged files; a finished run refuses to silently train 0 epochs. :func:`check_resumed_schedule`
refuses a resume whose learning-rate schedule was sized for another length: the scheduler's state restores
the checkpoint's length, so the run would follow the old schedule, not the configured one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver
from monai.utils.misc import str2bool

from malignet_bundle.atomic_io import TEMP_PREFIX, save_torch_atomic

__all__ = [
    "AtomicDiskSaver",
    "SafeCheckpointSaver",
    "CheckpointState",
    "FinishedRunError",
    "read_checkpoint_state",
    "prepare_resume",
    "check_resumed_schedule",
]

logger = logging.getLogger(__name__)

LATEST_PREFIX = "latest"
ARCHIVE_DIR = "previous_runs"
# the state entries that size a learning-rate schedule (MONAI's warm-up schedules, torch's LinearLR,
# CosineAnnealingLR, OneCycleLR); load_state_dict restores them from the checkpoint over the configured ones
SCHEDULE_LENGTH_KEYS = ("t_total", "warmup_steps", "total_iters", "T_max", "total_steps")


class AtomicDiskSaver(BaseSaveHandler):
    """An ignite save handler that never leaves a checkpoint half-written and never deletes before saving.

    ignite calls ``remove(old)`` before ``__call__(new)``; here ``remove`` only marks the old file, which is
    deleted after the new one has been written, synced and renamed into place. With a fixed ``filename``
    (``model.pt``) the rename itself replaces the old file, so nothing is deleted at all.

    Args:
        dirname: folder of the checkpoints (created when missing).
        filename: a fixed file name for every save (``model.pt``), or None for ignite's names.
        sweep_prefix: after each save, also remove older ``<sweep_prefix>_*.pt`` files of this folder (the
            ones a previous, resumed process left behind), so a folder holds one latest checkpoint.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, sweep_prefix: str | None = None):
        self.dirname = Path(dirname)
        self.filename = filename
        self.sweep_prefix = sweep_prefix
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` atomically, then delete the files it supersedes."""
        name = self.filename or filename
        path = save_torch_atomic(checkpoint, self.dirname / name)
        stale = [n for n in self._pending_removal if n != name]
        if self.sweep_prefix:
            stale += [
                p.name
                for p in self.dirname.glob(f"{self.sweep_prefix}_*.pt")
                if p.name != name and not p.name.startswith(TEMP_PREFIX)
            ]
        for old in dict.fromkeys(stale):
            (self.dirname / old).unlink(missing_ok=True)
        self._pending_removal = []
        logger.debug("saved %s", path)

    def remove(self, filename: str) -> None:
        """Mark ``filename`` for deletion once the next save has completed."""
        self._pending_removal.append(self.filename or filename)


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing through :class:`AtomicDiskSaver`; same arguments.

    Its key-metric tracking (the best score so far) is part of its ``state_dict``, so a resumed training
    keeps comparing against the best model saved before the kill instead of overwriting ``model.pt`` with
    its first, possibly worse, validation.

    Args:
        args: as ``monai.handlers.CheckpointSaver``.
        sweep_stale: for interval checkpoints, remove older ``<file_prefix>_*.pt`` files after each save
            (those a killed process left behind); use it only with ``n_saved=1``.
        kwargs: as ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, sweep_stale: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        prefix = kwargs.get("file_prefix", "")
        final_name = kwargs.get("final_filename")
        metric_name = kwargs.get("key_metric_filename")
        if self._final_checkpoint is not None:
            self._final_checkpoint.save_handler = AtomicDiskSaver(self.save_dir, final_name)
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = AtomicDiskSaver(self.save_dir, metric_name)
        if self._interval_checkpoint is not None:
            sweep = prefix if sweep_stale and prefix else None
            self._interval_checkpoint.save_handler = AtomicDiskSaver(self.save_dir, sweep_prefix=sweep)

    def state_dict(self) -> dict:
        """The key-metric tracking list (priority and file of each saved best model); empty without one."""
        if self._key_metric_checkpoint is None:
            return {}
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (a no-op for an empty one)."""
        if state_dict:
            super().load_state_dict(state_dict)


class FinishedRunError(RuntimeError):
    """Training was asked to resume a run that has already trained every epoch it was asked for."""


@dataclass(frozen=True)
class CheckpointState:
    """Where a training checkpoint stands: file, completed epochs and completed iterations."""

    path: Path
    epoch: int
    iteration: int


def read_checkpoint_state(path: str | os.PathLike) -> CheckpointState:
    """Read the trainer state that a training checkpoint records.

    The whole file is opened (``weights_only=True``, memory-mapped, so cheap), so a truncated or corrupt
    file fails here rather than when training resumes.

    Raises:
        ValueError: naming the file, when it cannot be read or holds no trainer state.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any reader error means the file is unusable; say which file and why
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    trainer = checkpoint.get("trainer") if isinstance(checkpoint, Mapping) else None
    if not isinstance(trainer, Mapping) or "epoch_length" not in trainer:
        raise ValueError(f"{path}: holds no trainer state (not a training checkpoint)")
    epoch_length = int(trainer["epoch_length"] or 0)
    if "iteration" in trainer:
        iteration = int(trainer["iteration"])
        epoch = iteration // epoch_length if epoch_length else 0
    else:
        epoch = int(trainer["epoch"])
        iteration = epoch * epoch_length
    return CheckpointState(path, epoch, iteration)


def _epoch_in_name(path: Path) -> int:
    match = re.search(r"=(\d+)\.pt$", path.name)
    return int(match.group(1)) if match else -1


def _is_rank0() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _archive(ckpt_dir: Path, files: list[Path]) -> Path:
    archive = ckpt_dir / ARCHIVE_DIR / time.strftime("%Y%m%d_%H%M%S")
    archive.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.replace(f, archive / f.name)
    return archive


def prepare_resume(ckpt_dir: str | os.PathLike, epochs: int, resume: bool = True, prefix: str = LATEST_PREFIX) -> str:
    """Choose the checkpoint a training in ``ckpt_dir`` resumes from; ``""`` to start from scratch.

    - ``resume``: the newest complete ``<prefix>_checkpoint_*.pt`` by the epoch and iteration it records.
      Damaged files are skipped with a warning that names them; temporary files of a killed write are
      removed. If that checkpoint has already trained ``epochs`` epochs, :class:`FinishedRunError`.
    - not ``resume``: a fresh start; earlier ``<prefix>_checkpoint_*.pt`` and ``model.pt`` are moved to
      ``ckpt_dir/previous_runs/<time>/`` (never deleted) so that they cannot be mistaken for this run's.

    Args:
        ckpt_dir: the training's checkpoint folder.
        epochs: the epochs this training is asked for (``max_epochs``).
        resume: whether to resume; the command line's ``--resume false`` arrives as the string "false".
        prefix: file prefix of the interval checkpoints.

    Raises:
        FinishedRunError: the newest checkpoint has trained ``epochs`` epochs or more.
    """
    ckpt_dir, resume = Path(ckpt_dir), str2bool(resume)
    if not ckpt_dir.is_dir():
        return ""
    candidates = sorted(
        (p for p in ckpt_dir.glob(f"{prefix}_checkpoint_*.pt") if not p.name.startswith(TEMP_PREFIX)),
        key=_epoch_in_name,
    )
    if not resume:
        # the best model and its operating-threshold sidecar belong to the earlier run too
        previous = candidates + [ckpt_dir / n for n in ("model.pt", "model.json") if (ckpt_dir / n).is_file()]
        if previous and _is_rank0():
            archive = _archive(ckpt_dir, previous)
            logger.warning("starting over (resume false): %d earlier files moved to %s", len(previous), archive)
        return ""
    if _is_rank0():
        for leftover in ckpt_dir.glob(f"{TEMP_PREFIX}*.pt"):  # a write that a kill interrupted
            logger.warning("removing %s, an incomplete write of a killed training", leftover)
            leftover.unlink(missing_ok=True)
    states = []
    for path in candidates:
        try:
            states.append(read_checkpoint_state(path))
        except ValueError as e:
            logger.warning("skipping damaged checkpoint: %s", e)
    if not states:
        if candidates:
            logger.warning("no complete checkpoint in %s: training starts from scratch", ckpt_dir)
        return ""
    newest = max(states, key=lambda s: (s.epoch, s.iteration, _epoch_in_name(s.path)))
    if newest.epoch >= int(epochs):
        raise FinishedRunError(
            f"{ckpt_dir} holds a finished run: {newest.path.name} has trained {newest.epoch} of the {epochs} "
            f"epochs asked for. Pass --epochs N with N > {newest.epoch} to train on, --resume false to start "
            f"over (earlier files are moved to {ckpt_dir / ARCHIVE_DIR}), or another --ckpt_dir."
        )
    logger.info("resuming from %s (epoch %d of %d, iteration %d)", newest.path, newest.epoch, epochs, newest.iteration)
    return str(newest.path)


def check_resumed_schedule(checkpoint: str | os.PathLike, lr_scheduler: Any, key: str = "lr_scheduler") -> None:
    """Refuse to resume when the checkpoint's learning-rate schedule is not the configured one.

    A scheduler's ``load_state_dict`` restores its length (e.g. ``WarmupCosineSchedule.t_total``) from
    the checkpoint, so a run resumed with another ``--epochs`` under ``configs/cosine_schedule.json`` would
    replay the old schedule: past its old end the cosine climbs back to the full learning rate. Schedules
    whose length does not depend on the epochs (the default warm-up) pass, so such runs can train on.

    Args:
        checkpoint: the checkpoint the training resumes from (:func:`prepare_resume`); ``""`` checks nothing.
        lr_scheduler: the configured scheduler, before the checkpoint is loaded into it.
        key: the scheduler's entry in the checkpoint.

    Raises:
        ValueError: naming the file, when its schedule is of another kind or length than the configured one.
    """
    if not checkpoint:
        return
    path = Path(checkpoint)
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)
    if saved is None:
        return
    configured = lr_scheduler.state_dict()
    name = type(lr_scheduler).__name__
    length_keys = [k for k in SCHEDULE_LENGTH_KEYS if k in configured or k in saved]
    if any(k not in configured or k not in saved for k in length_keys):
        raise ValueError(
            f"{path}: its learning-rate schedule is not a {name} (it has {sorted(k for k in length_keys if k in saved)}"
            f", the configured one {sorted(k for k in length_keys if k in configured)}); resume with the configs the "
            "run started with, or pass --resume false to start over."
        )
    changed = {k: (saved[k], configured[k]) for k in length_keys if saved[k] != configured[k]}
    if changed:
        sizes = ", ".join(f"{k} {old} in the checkpoint, {new} configured" for k, (old, new) in changed.items())
        raise ValueError(
            f"{path}: its {name} was sized for another run length ({sizes}). Resuming would follow the "
            "checkpoint's schedule, not this one (a warm-up + cosine schedule climbs back to the full learning rate "
            "after its end). Resume with the --epochs the run started with, or pass --resume false to start over "
            f"(earlier files are moved to {path.parent / ARCHIVE_DIR})."
        )

"""Where the seconds of one training step go: data, backbone, pyramid and decoders, RPN, ROI heads, loss, backward.

The step is the bundle's own: ``train.json`` (``+ baseline.json`` for Mask R-CNN) with the CPU-sized network
of the benchmark's ``cpu`` profile, run by its ``SemiSupervisedTrainer``. Each component is timed with a
wall clock around its call (the CPU runs kernels synchronously, so the clock is the cost), nested timers
report their own total, and whatever no timer covers is the Python and ignite overhead. A short
``torch.profiler`` run adds the most expensive operators.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["COMPONENTS", "CPU_NETWORK", "StepTimer", "profile_training", "compare_settings", "format_breakdown"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# the CPU configuration (the benchmark's ``cpu`` profile network and batch)
CPU_NETWORK: dict[str, Any] = json.loads((CONFIG_DIR / "cpu.json").read_text())

# (label, parent label or None): the rows of the breakdown, in the order of a step
COMPONENTS: tuple[tuple[str, str | None], ...] = (
    ("data: labeled batch", None),
    ("data: unlabeled batch", None),
    ("forward", None),
    ("resize/batch (transform)", "forward"),
    ("backbone (ResNet body)", "forward"),
    ("pyramid (FPN / LFPN + decoders + ladder cost)", "forward"),
    ("global feature embedding", "forward"),
    ("RPN", "forward"),
    ("RPN head convs", "RPN"),
    ("anchors", "RPN"),
    ("proposal decoding + NMS (filter_proposals)", "RPN"),
    ("RPN loss", "RPN"),
    ("ROI heads", "forward"),
    ("ROI sampling (select_training_samples)", "ROI heads"),
    ("box ROI Align", "ROI heads"),
    ("box head (MLP)", "ROI heads"),
    ("box predictor", "ROI heads"),
    ("box loss", "ROI heads"),
    ("mask ROI Align", "ROI heads"),
    ("mask head (4 convs)", "ROI heads"),
    ("mask predictor", "ROI heads"),
    ("mask loss", "ROI heads"),
    ("loss sum", None),
    ("backward", None),
    ("grad clip + optimizer step", None),
)


class StepTimer:
    """Accumulates wall-clock seconds per label; ``section(label)`` times a block, nested blocks included."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def section(self, label: str) -> Iterator[None]:
        """Time the block under ``label``."""
        self.start(label)
        try:
            yield
        finally:
            self.stop(label)

    def start(self, label: str) -> None:
        """Open ``label`` (for event-driven sections)."""
        self._open[label].append(time.perf_counter())

    def stop(self, label: str) -> None:
        """Close the innermost open ``label``."""
        if self._open[label]:
            self.seconds[label] += time.perf_counter() - self._open[label].pop()

    def reset(self) -> None:
        """Forget everything measured so far (after warm-up)."""
        self.seconds.clear()


def _time_module(timer: StepTimer, module: torch.nn.Module | None, label: str) -> None:
    if module is None:
        return
    module.register_forward_pre_hook(lambda *_: timer.start(label))
    module.register_forward_hook(lambda *_: timer.stop(label))


def _time_method(timer: StepTimer, owner: Any, name: str, label: str) -> None:
    original: Callable = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with timer.section(label):
            return original(*args, **kwargs)

    setattr(owner, name, timed)


def instrument(network: torch.nn.Module, timer: StepTimer) -> None:
    """Put a timer around every component of ``network`` named in :data:`COMPONENTS`."""
    from torchvision.models.detection import roi_heads as tv_roi_heads

    _time_module(timer, network.transform, "resize/batch (transform)")
    _time_module(timer, network.backbone.body, "backbone (ResNet body)")
    _time_module(timer, network.backbone.fpn, "pyramid (FPN / LFPN + decoders + ladder cost)")
    if hasattr(network.backbone.fpn, "forward_with_ladder"):
        _time_method(
            timer, network.backbone.fpn, "forward_with_ladder", "pyramid (FPN / LFPN + decoders + ladder cost)"
        )
    _time_module(timer, getattr(network, "global_embedding", None), "global feature embedding")
    _time_module(timer, network.rpn, "RPN")
    _time_module(timer, network.rpn.head, "RPN head convs")
    _time_module(timer, network.rpn.anchor_generator, "anchors")
    _time_method(timer, network.rpn, "filter_proposals", "proposal decoding + NMS (filter_proposals)")
    _time_method(timer, network.rpn, "compute_loss", "RPN loss")
    heads = network.roi_heads
    _time_module(timer, heads, "ROI heads")
    _time_method(timer, heads, "select_training_samples", "ROI sampling (select_training_samples)")
    _time_module(timer, heads.box_roi_pool, "box ROI Align")
    _time_module(timer, heads.box_head, "box head (MLP)")
    _time_module(timer, heads.box_predictor, "box predictor")
    _time_module(timer, heads.mask_roi_pool, "mask ROI Align")
    _time_module(timer, heads.mask_head, "mask head (4 convs)")
    _time_module(timer, heads.mask_predictor, "mask predictor")
    # the loss functions are module globals of torchvision's roi_heads, looked up at call time
    _time_method(timer, tv_roi_heads, "fastrcnn_loss", "box loss")
    _time_method(timer, tv_roi_heads, "maskrcnn_loss", "mask loss")


def _attach_step_events(trainer: Any, timer: StepTimer) -> None:
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: timer.start("data: labeled batch"))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: timer.stop("data: labeled batch"))
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: timer.start("step"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: timer.stop("step"))
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda _: timer.stop("forward"))
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda _: timer.start("loss sum"))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda _: timer.stop("loss sum"))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda _: timer.start("backward"))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda _: timer.stop("backward"))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda _: timer.start("grad clip + optimizer step"))
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda _: timer.stop("grad clip + optimizer step"))
    # the forward starts inside _iteration, after the unlabeled batch: time from the network's first call
    network = trainer.network
    network.register_forward_pre_hook(lambda *_: timer.start("forward"))
    _time_method(timer, trainer, "_next_unlabeled", "data: unlabeled batch")


def build_trainer(
    dataset_dir: Path,
    chest_detector: Path,
    work_dir: Path,
    baseline: bool,
    epoch_length: int,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The bundle's trainer for the CPU-sized network (``train.json`` [+ ``baseline.json``]).

    One epoch of ``epoch_length`` steps, no validation, no checkpoint.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [CONFIG_DIR / "train.json"] + ([CONFIG_DIR / "baseline.json"] if baseline else [])
    parser.read_config([str(f) for f in files])
    settings = {
        "bundle_root": str(CONFIG_DIR.parent),
        "dataset_dir": str(dataset_dir),
        "data_list_file_path": str(Path(dataset_dir) / "datalist.json"),
        "chest_detector_path": str(chest_detector),
        "ckpt_dir": str(work_dir),
        "output_dir": str(work_dir),
        "amp": False,
        "device": "$torch.device('cpu')",
        "epochs": 1,
        "val_interval": 1000,  # never within the one profiled epoch
        "train#trainer#epoch_length": epoch_length,
        **CPU_NETWORK,
        **dict(overrides or {}),
    }
    for key, value in settings.items():
        parser[key] = value
    return parser.get_parsed_content("train#trainer")


def profile_training(
    dataset_dir: Path,
    chest_detector: Path,
    work_dir: Path,
    steps: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    operators: int = 0,
) -> dict[str, dict[str, Any]]:
    """Profile ``steps`` training steps of Mask R-CNN and of MaligNet (after ``warmup`` steps).

    Returns per model the mean seconds per step of every component of :data:`COMPONENTS`, ``step``,
    ``overhead`` (step minus the top-level components), ``images_per_second`` (labeled images) and, with
    ``operators`` > 0, the top operators of one extra step by ``torch.profiler`` self CPU time.
    """
    if threads:
        torch.set_num_threads(threads)
    results: dict[str, dict[str, Any]] = {}
    for name, baseline in (("maskrcnn", True), ("malignet", False)):
        torch.manual_seed(0)
        trainer = build_trainer(dataset_dir, chest_detector, work_dir / name, baseline, warmup + steps, overrides)
        timer = StepTimer()
        instrument(trainer.network, timer)
        _attach_step_events(trainer, timer)
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=warmup), lambda _, t=timer: t.reset())
        batch_size = trainer.data_loader.batch_size
        trainer.run()
        seconds = {label: timer.seconds.get(label, 0.0) / steps for label, _ in COMPONENTS}
        seconds["step"] = timer.seconds["step"] / steps
        top = sum(seconds[label] for label, parent in COMPONENTS if parent is None and not label.startswith("data"))
        seconds["overhead"] = seconds["step"] - top - seconds["data: unlabeled batch"]
        step_with_data = seconds["step"] + seconds["data: labeled batch"]
        results[name] = {
            "seconds": seconds,
            "images_per_second": batch_size / step_with_data,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
        }
        if operators:
            results[name]["operators"] = _top_operators(trainer, operators)
    return results


def _top_operators(trainer: Any, count: int) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    batch = next(iter(trainer.data_loader))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer._iteration(trainer, batch)
    table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [(e.key, e.self_cpu_time_total / 1e6) for e in table]


def format_breakdown(results: Mapping[str, Mapping[str, Any]], reference: str = "maskrcnn") -> str:
    """A Markdown table: seconds per step of each component for each model, and its share of the step."""
    names = list(results)
    header = "| component | " + " | ".join(f"{n} s | {n} %" for n in names) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(names))]
    rows: Sequence[tuple[str, str | None]] = (*COMPONENTS, ("overhead (Python, ignite, untimed)", None))
    for label, parent in rows:
        key = "overhead" if label.startswith("overhead") else label
        cells = []
        for n in names:
            value = results[n]["seconds"].get(key, 0.0)
            total = results[n]["seconds"]["step"] + results[n]["seconds"]["data: labeled batch"]
            cells.append(f"{value:.3f} | {100 * value / total:.0f}")
        indent = "&nbsp;&nbsp;" * (0 if parent is None else (1 if parent == "forward" else 2))
        lines.append(f"| {indent}{label} | " + " | ".join(cells) + " |")
    totals = " | ".join(
        f"{results[n]['seconds']['step'] + results[n]['seconds']['data: labeled batch']:.3f} | 100" for n in names
    )
    lines.append(f"| **step incl. data** | {totals} |")
    ips = " | ".join(f"{results[n]['images_per_second']:.2f} img/s | " for n in names)
    lines.append(f"| labeled images per second | {ips}|")
    return "\n".join(lines)


def compare_settings(
    dataset_dir: Path,
    chest_detector: Path,
    work_dir: Path,
    settings: Mapping[str, Mapping[str, Any]],
    steps: int = 10,
    warmup: int = 2,
    rounds: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Training throughput of several override sets, measured in one run, interleaved, as ratios to the first.

    A shared 2-core machine drifts by ±20 % between runs minutes apart (docs/BENCHMARKS.md), so each round
    profiles every setting once, in turn, and the ratio of medians over rounds is reported.

    Args:
        dataset_dir: the dataset (as :func:`profile_training`).
        chest_detector: chest detector weights.
        work_dir: scratch folder of the trainers.
        settings: label → bundle overrides; the first is the reference (usually ``{}``).
        steps: measured steps per profile.
        warmup: steps before the measurement starts.
        rounds: how many times each setting is profiled.
        threads: torch threads (None: torch's choice).

    Returns:
        per label and model (``maskrcnn``, ``malignet``): ``images_per_second`` per round, their ``median``
        and ``ratio`` (the median over the reference's median).
    """
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in settings}
    for _ in range(rounds):
        for label, overrides in settings.items():
            results = profile_training(dataset_dir, chest_detector, work_dir, steps, warmup, threads, overrides)
            for model, result in results.items():
                samples[label].setdefault(model, []).append(result["images_per_second"])
    reference = next(iter(settings))
    out: dict[str, dict[str, Any]] = {}
    for label, models in samples.items():
        out[label] = {}
        for model, values in models.items():
            median = float(np.median(values))
            out[label][model] = {
                "images_per_second": values,
                "median": median,
                "ratio": median / float(np.median(samples[reference][model])),
            }
    return out

"""GPU readiness check: AMP training, DDP over NCCL and inference latency of MaligNet and Mask R-CNN.

The GPU path (``amp``, ``multi_gpu_train.json`` with NCCL) is the thesis's setting but is not exercised on a
CPU machine. This check runs it through the bundle's own configs on a small synthetic dataset it makes:

1. ``train_<model>``: ``train.json`` (``+ baseline.json`` for Mask R-CNN) through ``monai.bundle``'s
   ``ConfigWorkflow``, one epoch of a fixed number of steps followed by the validation and checkpoints that
   epoch ends with. Every loss term of every step must be finite; seconds per step, peak GPU memory
   (``torch.cuda.max_memory_allocated``) and AMP's skipped optimizer steps are recorded.
2. ``latency``: each network of part 1, in eval mode in the same process once it has trained, on batches of
   chest crops (fp32, and AMP on a GPU; at the configured score threshold and at 0, where the mask head
   sees the most detections): median seconds per forward over repeats after warm-up, with
   ``torch.cuda.synchronize`` around each.
3. ``ddp_<model>``: the same training under ``torchrun`` with ``multi_gpu_train.json`` (NCCL on a GPU, gloo
   on a CPU), a few steps on every rank: exit code 0 and finite losses on every rank.

Every training runs in its own process (a CUDA error poisons a whole process; an NCCL hang must not take
the rest down) with a time limit, and the result JSON is rewritten after each part, so a kill leaves what was
measured. The ``gpu`` profile is the thesis configuration (ResNet-50, 320 px, 16 labeled + 16 unlabeled
images per step, AMP); the ``cpu`` profile runs the same code with a tiny network so a test can run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.experiments.ssl_benchmark import machine_description

logger = logging.getLogger(__name__)

__all__ = ["Profile", "PROFILES", "MODELS", "default_profile", "prepare_data", "run_check", "format_table", "main"]

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
# model name → the configs after train.json that make it
MODELS: dict[str, tuple[str, ...]] = {"malignet": (), "maskrcnn": ("baseline.json",)}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of one check.

    Args:
        name: ``"gpu"`` or ``"cpu"``.
        image_size: crop side (Table 11: 320).
        batch_size: labeled images per step; the unlabeled batch is as large (``unlabeled_batch_size``).
        steps: single-process training steps per model.
        ddp_steps: steps per rank under torchrun.
        amp: mixed precision (CUDA autocast + GradScaler).
        network: ``network_def`` overrides (the backbone and widths).
        latency_batches: batch sizes timed for inference.
        latency_repeats: timed forwards per batch size (the median is reported).
        latency_warmup: untimed forwards first (cuDNN algorithm choice, allocator growth).
        num_workers: data loader workers. 0 on the GPU too: with workers, every batch passes through
            ``/dev/shm``, which a container often caps at 64 MiB, less than one 16-image batch with its masks.
        threads: ``OMP_NUM_THREADS`` of every part's processes (None: torch's choice). One on the CPU: a
            2-core machine shared with other work stalls on a second thread waiting for the first.
        part_timeout_s: time limit of each part's process.
    """

    name: str
    image_size: int
    batch_size: int
    steps: int
    ddp_steps: int
    amp: bool
    network: Mapping[str, Any]
    latency_batches: tuple[int, ...]
    latency_repeats: int
    latency_warmup: int
    num_workers: int
    threads: int | None
    part_timeout_s: int


PROFILES: dict[str, Profile] = {
    "gpu": Profile(
        name="gpu",
        image_size=320,
        batch_size=16,
        steps=50,
        ddp_steps=5,
        amp=True,
        network={},  # train.json's: ResNet-50, 256-channel pyramid, Table 11
        latency_batches=(1, 16),
        latency_repeats=20,
        latency_warmup=3,
        num_workers=0,
        threads=None,
        part_timeout_s=240,
    ),
    "cpu": Profile(
        name="cpu",
        image_size=96,
        batch_size=2,
        steps=3,
        ddp_steps=2,
        amp=False,
        network={
            "backbone": "resnet18",
            "pyramid_channels": 32,
            "representation_size": 64,
            "global_channels": 32,
            "box_batch_size_per_image": 32,
            "rpn_pre_nms_top_n_train": 200,
            "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 50,
        },
        latency_batches=(1, 2),
        latency_repeats=3,
        latency_warmup=1,
        num_workers=0,
        threads=1,
        part_timeout_s=180,
    ),
}


def default_profile() -> str:
    """``"gpu"`` where CUDA is available, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def _world_size(profile: Profile) -> int:
    """Processes of the torchrun part: one per GPU, or two CPU processes."""
    return max(1, torch.cuda.device_count()) if profile.name == "gpu" and torch.cuda.is_available() else 2


def prepare_data(work_dir: Path, profile: Profile, world_size: int) -> tuple[Path, Path]:
    """Write the synthetic dataset and train a chest detector for it, unless ``work_dir`` has them.

    Every rank of the torchrun part gets a full labeled and unlabeled batch and at least one validation view
    (a rank without validation data would stop the others in the metric's all-gather). Returns the dataset
    folder and the detector's weights.
    """
    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.data.datalist import load_datalist
    from malignet_bundle.data.synthesize import write_dataset
    from malignet_bundle.engines.chest_detector import train_chest_detector

    data, detector = work_dir / "data", work_dir / "chest_detector.pt"
    # one study per patient, two views (anterior, posterior) per study
    patients = math.ceil(profile.batch_size * world_size / 2)
    wanted = {"labeled": 2 * patients, "unlabeled": 2 * patients, "validation": max(2, world_size)}
    datalist_path = data / "datalist.json"
    present = load_datalist(datalist_path) if datalist_path.is_file() else None
    if present is None or any(len(present[split]) < n for split, n in wanted.items()):
        shutil.rmtree(data, ignore_errors=True)
        detector.unlink(missing_ok=True)
        write_dataset(
            data,
            labeled=patients,
            unlabeled=patients,
            validation=math.ceil(wanted["validation"] / 2),
            test=0,
            seed=11,
            workers=min(8, os.cpu_count() or 1),
            progress=False,
        )
    if not detector.is_file():
        # on the CPU: a detector that crops well enough takes seconds there, and the check is about the lesion
        # network's GPU path, not the detector's
        class_map = ClassMap.from_metadata(CONFIG_DIR / "metadata.json")
        train_chest_detector(load_datalist(datalist_path), data, class_map, detector, epochs=2, progress=False)
    return data, detector


def _overrides(profile: Profile, data: Path, detector: Path, run_dir: Path, steps: int) -> dict[str, Any]:
    """The config merged last: paths, one epoch of ``steps`` steps, the profile's sizes and network."""
    return {
        "bundle_root": str(ROOT),
        "dataset_dir": str(data),
        "data_list_file_path": str(data / "datalist.json"),
        "chest_detector_path": str(detector),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir),
        "amp": profile.amp,
        "epochs": 1,
        "val_interval": 1,  # the validation (evaluator under AMP, metric across ranks) is part of the path
        "train#trainer#epoch_length": steps,
        "batch_size": profile.batch_size,
        "image_size": profile.image_size,
        "num_workers": profile.num_workers,
        **{f"network_def#{k}": v for k, v in profile.network.items()},
    }


def _config_files(model: str, distributed: bool, overrides: Path) -> list[str]:
    names = ["train.json", *MODELS[model], *(["multi_gpu_train.json"] if distributed else [])]
    return [str(CONFIG_DIR / n) for n in names] + [str(overrides)]


def environment() -> dict[str, Any]:
    """Device, GPU count and versions of Python, torch, torchvision, CUDA, cuDNN, NCCL, MONAI and ignite."""
    import ignite
    import monai
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count(),
        "cpu_cores": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
        with contextlib.suppress(Exception):  # a build without NCCL still reports the rest
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    else:
        info["device"] = machine_description().split(",")[0]  # the processor's model name
    info["machine"] = machine_description()
    return info


# --------------------------------------------------------------------------------------------- worker side


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepRecorder:
    """Ignite handlers that keep every step's loss terms, seconds and AMP grad scale."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._started = 0.0
        self._last_completed: float | None = None
        self.peak_memory_bytes: int | None = None
        self.peak_reserved_bytes: int | None = None

    def attach(self, trainer: Any) -> StepRecorder:
        """Register on ``trainer`` (a MONAI ``SupervisedTrainer``); peak memory counts from here."""
        from ignite.engine import Events

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        return self

    def _iteration_started(self, engine: Any) -> None:
        _synchronize()
        self._started = time.perf_counter()
        if self._last_completed is None:
            self._last_completed = self._started

    def _iteration_completed(self, engine: Any) -> None:
        output = engine.state.output
        first = output[0] if isinstance(output, list) else output
        # "loss" is the weighted total (Keys.LOSS); the terms are the network's "loss_*" entries
        losses = {str(k): float(v) for k, v in first.items() if str(k).startswith("loss_")}
        total = float(first["loss"])
        _synchronize()
        now = time.perf_counter()
        scaler = getattr(engine, "scaler", None)
        self.steps.append(
            {
                "iteration": engine.state.iteration,
                "loss": total,
                "losses": losses,
                # the forward, backward and step (the unlabeled batch included); the labeled batch is fetched before
                "seconds": now - self._started,
                # from the previous step's end: the labeled batch's loading too
                "wall_seconds": now - (self._last_completed or self._started),
                "grad_scale": float(scaler.get_scale()) if engine.amp and scaler is not None else None,
            }
        )
        self._last_completed = now
        if torch.cuda.is_available():
            self.peak_memory_bytes = torch.cuda.max_memory_allocated()
            self.peak_reserved_bytes = torch.cuda.max_memory_reserved()


def _train_worker(spec: Mapping[str, Any]) -> None:
    """One training process (alone, or one rank of torchrun): run the workflow, write this rank's record."""
    from monai.bundle import ConfigWorkflow

    rank = int(os.environ.get("RANK", "0"))
    workflow = ConfigWorkflow(
        config_file=spec["configs"],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        run_id="training",
        workflow_type="train",
    )
    started = time.perf_counter()
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    recorder = StepRecorder().attach(trainer)
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    validation = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, int | float)}
    latency = None
    if spec.get("latency"):
        try:
            latency = _latency(workflow.parser, spec["latency"])
        except Exception as e:  # the training's record must still be written; the error is reported
            logger.exception("latency measurement failed")
            latency = {"error": f"{type(e).__name__}: {e}"}
    record = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "device": str(workflow.parser.get_parsed_content("device")),
        "amp": bool(trainer.amp),
        "steps": recorder.steps,
        "validation": validation,
        "peak_memory_bytes": recorder.peak_memory_bytes,
        "peak_reserved_bytes": recorder.peak_reserved_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # set_determinism in the config's initialize: the step times are those of deterministic cuDNN kernels
        "cudnn": {"deterministic": torch.backends.cudnn.deterministic, "benchmark": torch.backends.cudnn.benchmark},
        "seconds": time.perf_counter() - started,
        "latency": latency,
        "environment": environment(),
    }
    workflow.finalize()  # multi_gpu_train.json: barrier, then the process group is destroyed
    write_json_atomic(record, Path(spec["record"]).with_name(f"rank{rank}.json"))


def _latency(parser: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Time eval-mode forwards of the config's ``network`` (as trained) on chest crops of the annotated views.

    Crops come from the validation preprocessing (deterministic) over the labeled split, which has a batch's
    worth of views; a batch larger than that repeats them.
    """
    from monai.data import Dataset

    from malignet_bundle.data.datalist import resolve_items

    network = parser.get_parsed_content("network")
    network = network.module if hasattr(network, "module") else network
    items = resolve_items(parser.get_parsed_content("datalist")["labeled"], parser.get_parsed_content("dataset_dir"))
    dataset = Dataset(items[: max(spec["batches"])], transform=parser.get_parsed_content("validate#preprocessing"))
    crops = [torch.as_tensor(item["image"]) for item in dataset]
    device = next(network.parameters()).device
    network.eval()
    precisions = ["fp32", "amp"] if spec["amp"] and device.type == "cuda" else ["fp32"]
    configured = float(network.roi_heads.score_thresh)
    # At the configured threshold a barely trained model keeps few detections, so the mask head hardly
    # runs; at 0 it keeps the per-image cap (box_detections_per_img): the mask head's worst case.
    timings: list[dict[str, Any]] = []
    for score_thresh in dict.fromkeys([configured, 0.0]):
        network.roi_heads.score_thresh = score_thresh
        for precision in precisions:
            for batch in spec["batches"]:
                images = [crops[i % len(crops)].to(device) for i in range(batch)]
                timed = _time_forward(network, images, precision == "amp", spec["warmup"], spec["repeats"])
                timings.append({"precision": precision, "batch": batch, "score_thresh": score_thresh, **timed})
    network.roi_heads.score_thresh = configured
    return {"device": str(device), "cudnn_benchmark": torch.backends.cudnn.benchmark, "timings": timings}


def _time_forward(network: torch.nn.Module, images: list[torch.Tensor], amp: bool, warmup: int, repeats: int) -> dict:
    """Median seconds of ``network(images)`` over ``repeats`` after ``warmup``, and detections per image."""
    device_type = images[0].device.type
    seconds: list[float] = []
    detections = 0
    with torch.inference_mode(), torch.autocast(device_type, enabled=amp):
        for i in range(warmup + repeats):
            _synchronize()
            started = time.perf_counter()
            outputs = network(images)
            _synchronize()
            if i >= warmup:
                seconds.append(time.perf_counter() - started)
                detections = sum(len(o["boxes"]) for o in outputs)
    return {
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "repeats": repeats,
        "detections_per_image": detections / len(images),
    }


# ----------------------------------------------------------------------------------------------- parent side


def _run_process(
    command: Sequence[str], log: Path, timeout: int, cwd: Path, threads: int | None = None
) -> tuple[int, float]:
    """Run ``command`` in its own session, output to ``log``; on timeout its whole process group is killed.

    torchrun's ranks are children of the launcher: killing the launcher alone would leave them holding the
    GPU. Returns (exit code, seconds); a timeout returns 124 like coreutils' ``timeout``.
    """
    # the bundle from this checkout, whatever the working directory and whether or not it is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            code = 124
        except BaseException:  # this process is being stopped (SIGTERM from an outer timeout, see main)
            _kill_group(process)
            raise
    return code, time.perf_counter() - started


def _kill_group(process: subprocess.Popen) -> None:
    # before the leader is reaped, so its id cannot yet name another process group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def _summarize_steps(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Losses finite?, first and last total loss, seconds per step after the first steps, AMP skipped steps."""
    finite = bool(steps) and all(math.isfinite(v) for s in steps for v in [s["loss"], *s["losses"].values()])
    # the first steps pay for cuDNN's algorithm search and the allocator's growth
    skip = min(5, len(steps) // 5) if len(steps) > 1 else 0
    timed = steps[skip:]
    scales = [s["grad_scale"] for s in steps if s.get("grad_scale") is not None]
    # GradScaler halves its scale after each step it skipped for infinite gradients
    skipped = sum(1 for a, b in zip([65536.0, *scales], scales, strict=False) if b < a) if scales else None
    return {
        "steps": len(steps),
        "losses_finite": finite,
        "loss_terms": sorted(steps[0]["losses"]) if steps else [],
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "first_losses": steps[0]["losses"] if steps else None,
        "last_losses": steps[-1]["losses"] if steps else None,
        "seconds_per_step": statistics.mean(s["seconds"] for s in timed) if timed else None,
        "wall_seconds_per_step": statistics.mean(s["wall_seconds"] for s in timed) if timed else None,
        "first_step_seconds": steps[0]["seconds"] if steps else None,
        "amp_skipped_steps": skipped,
        "final_grad_scale": scales[-1] if scales else None,
    }


def _training_part(
    profile: Profile, model: str, data: Path, detector: Path, work_dir: Path, world_size: int | None
) -> dict[str, Any]:
    """Train ``model`` alone (``world_size`` None) or under torchrun; returns the part's result."""
    distributed = world_size is not None
    run_dir = work_dir / f"{'ddp' if distributed else 'train'}_{model}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a finished run would refuse to train again (resume semantics)
    run_dir.mkdir(parents=True)
    steps = profile.ddp_steps if distributed else profile.steps
    overrides = run_dir / "overrides.json"
    write_json_atomic(_overrides(profile, data, detector, run_dir, steps), overrides)
    spec: dict[str, Any] = {
        "configs": _config_files(model, distributed, overrides),
        "record": str(run_dir / "rank.json"),
    }
    if not distributed:
        # timed in this process once it has trained: one process start less, and the network as trained
        spec["latency"] = {
            "batches": list(profile.latency_batches),
            "repeats": profile.latency_repeats,
            "warmup": profile.latency_warmup,
            "amp": profile.amp,
        }
    spec_path = run_dir / "spec.json"
    write_json_atomic(spec, spec_path)
    command = [sys.executable, "-m", "malignet_bundle.experiments.gpu_check", "--train-worker", str(spec_path)]
    if distributed:
        # the ranks' rendezvous on a free local port (--standalone): a fixed one may still be held
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(world_size),
            *command[1:],
        ]
    log = run_dir / "log.txt"
    code, seconds = _run_process(command, log, profile.part_timeout_s, run_dir, profile.threads)
    ranks = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank*.json"))]
    result: dict[str, Any] = {
        "command": command,
        "configs": [Path(c).name for c in _config_files(model, distributed, overrides)[:-1]],
        "returncode": code,
        "timed_out": code == 124,
        "seconds": seconds,
        "log": str(log),
    }
    if distributed:
        result["world_size"] = world_size
        result["backend"] = "nccl" if torch.cuda.is_available() else "gloo"
        result["ranks"] = [
            {
                "rank": r["rank"],
                "device": r["device"],
                "peak_memory_mb": _mb(r.get("peak_memory_bytes")),
                "peak_rss_mb": _mb(r.get("peak_rss_bytes")),
                **_summarize_steps(r["steps"]),
            }
            for r in ranks
        ]
        result["validation"] = ranks[0]["validation"] if ranks else None
        finite = len(ranks) == world_size and all(r["losses_finite"] for r in result["ranks"])
        result["passed"] = code == 0 and finite
    else:
        record = ranks[0] if ranks else {"steps": []}
        summary = _summarize_steps(record["steps"])
        result.update(summary)
        result["device"] = record.get("device")
        result["amp"] = record.get("amp")
        result["validation"] = record.get("validation")
        result["peak_memory_mb"] = _mb(record.get("peak_memory_bytes"))
        result["peak_reserved_mb"] = _mb(record.get("peak_reserved_bytes"))
        result["peak_rss_mb"] = _mb(record.get("peak_rss_bytes"))
        result["cudnn"] = record.get("cudnn")
        result["step_records"] = record["steps"]
        result["latency"] = record.get("latency")
        everything_skipped = summary["amp_skipped_steps"] is not None and summary["amp_skipped_steps"] >= len(
            record["steps"]
        )
        result["passed"] = (
            code == 0 and summary["losses_finite"] and summary["steps"] == steps and not everything_skipped
        )
    if not result["passed"]:
        result["log_tail"] = _log_tail(log)
    return result


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _latency_part(parts: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The latency each single-process training part measured on the network it had just trained."""
    # moved here from the training parts, so the JSON holds each figure once
    models = {m: parts.get(f"train_{m}", {}).pop("latency", None) for m in MODELS}
    return {
        "measured_in": "the train_<model> process, on the network it trained, in eval mode",
        "models": {m: v for m, v in models.items() if v},
        "passed": all(v and "timings" in v for v in models.values()),
    }


def run_check(
    work_dir: str | os.PathLike,
    output: str | os.PathLike,
    profile: str | Profile | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Run every part and write the results to ``output`` (JSON, rewritten after each part).

    Args:
        work_dir: dataset, chest detector, runs and logs (reused: the dataset is made once).
        output: the result JSON.
        profile: ``"gpu"``, ``"cpu"`` or a :class:`Profile`; default: ``"gpu"`` where CUDA is available.
        world_size: processes of the torchrun part (default: one per GPU, two on a CPU).

    Returns:
        The results: ``environment``, ``profile``, ``parts`` (``train_<model>``, ``latency``,
        ``ddp_<model>``, each with ``passed``) and ``passed`` (all parts).
    """
    profile = PROFILES[profile or default_profile()] if not isinstance(profile, Profile) else profile
    world_size = world_size or _world_size(profile)
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "profile": dataclasses.asdict(profile),
        "world_size": world_size,
        "environment": environment(),
        "parts": {},
        "passed": False,
    }
    started = time.perf_counter()

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        results["passed"] = bool(results["parts"]) and all(p.get("passed") for p in results["parts"].values())
        write_json_atomic(results, output)

    threads = torch.get_num_threads()
    if profile.threads:  # the chest detector trains here: same thread rule as the parts' processes
        torch.set_num_threads(profile.threads)
    try:
        data, detector = prepare_data(work, profile, world_size)
    finally:
        torch.set_num_threads(threads)
    results["data_seconds"] = time.perf_counter() - started
    parts = [(f"train_{m}", lambda m=m: _training_part(profile, m, data, detector, work, None)) for m in MODELS]
    parts.append(("latency", lambda: _latency_part(results["parts"])))
    # last: an NCCL hang (the classic first-run failure) then costs only its own time limit
    parts += [(f"ddp_{m}", lambda m=m: _training_part(profile, m, data, detector, work, world_size)) for m in MODELS]
    for name, part in parts:
        results["parts"][name] = part()
        save()
    return results


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(results: Mapping[str, Any]) -> str:
    """A short text table of the result JSON."""
    env = results["environment"]
    lines = [
        f"{env.get('device')} | torch {env.get('torch')} | CUDA {env.get('cuda')} | "
        f"profile {results['profile']['name']}",
        "",
        # peak MB: the allocator's peak on a GPU, the process's resident peak on a CPU
        # s/step: the step itself (the unlabeled batch's loading included); wall: with the labeled batch's too
        f"{'part':16s} {'pass':5s} {'steps':>5s} {'s/step':>8s} {'wall':>8s} {'peak MB':>9s} {'skipped':>7s} "
        f"{'first loss':>10s} {'last loss':>10s}",
    ]
    for name, part in results["parts"].items():
        if name == "latency":
            continue
        rows = part.get("ranks") or [part]
        for row in rows:
            label = name if "rank" not in row else f"{name}[{row['rank']}]"
            first, last = row.get("first_loss"), row.get("last_loss")
            peak = row.get("peak_memory_mb") if row.get("peak_memory_mb") is not None else row.get("peak_rss_mb")
            lines.append(
                f"{label:16s} {str(bool(part.get('passed'))):5s} {_cell(row.get('steps')):>5s} "
                f"{_cell(row.get('seconds_per_step')):>8s} {_cell(row.get('wall_seconds_per_step')):>8s} "
                f"{_cell(peak, 0):>9s} {_cell(row.get('amp_skipped_steps')):>7s} {_cell(first):>10s} {_cell(last):>10s}"
            )
    latency = results["parts"].get("latency")
    if latency:
        lines += ["", f"latency ({'passed' if latency.get('passed') else 'FAILED'}): median ms per forward"]
        for model, entry in latency.get("models", {}).items():
            if "error" in entry:
                lines.append(f"  {model:9s} failed: {entry['error']}")
            for t in entry.get("timings", []):
                lines.append(
                    f"  {model:9s} {t['precision']:4s} batch {t['batch']:3d}  score >= {t['score_thresh']:.2f}  "
                    f"{1000 * t['median_seconds']:8.1f} ms  ({t['detections_per_image']:.0f} detections/image)"
                )
    lines += ["", f"all parts passed: {results['passed']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the check (or, internally, one worker); returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="runs/gpu_check", help="dataset, runs and logs")
    parser.add_argument("--output", default=None, help="result JSON (default: <work_dir>/gpu_check.json)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="default: gpu if CUDA is available")
    parser.add_argument("--world_size", type=int, default=None, help="torchrun processes (default: GPUs, or 2)")
    parser.add_argument("--train-worker", dest="train_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_worker:
        _train_worker(json.loads(Path(args.train_worker).read_text()))
        return 0
    output = Path(args.output or Path(args.work_dir) / "gpu_check.json")
    # SIGTERM (coreutils' timeout) as an exception, so the running part's process group is killed on the way out:
    # it is in a session of its own and would otherwise keep the GPU
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run_check(args.work_dir, output, args.profile, args.world_size)
    print(format_table(results))
    print(f"written: {output}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Does a trained classifier read its per-image global vector? An ablation on a finished benchmark run.

MaligNet's classifier frontend concatenates one vector per image, pooled from C5, to every region's
features (thesis §4.2.3, Fig. 8): a reader names a hot spot from the whole scan. Whether a *trained* model
uses that context is a question about the model that the metrics alone do not answer. This module evaluates
a finished run of ``scripts/benchmark_ssl.py`` again on its test split, with its own checkpoint, its own
operating threshold and the benchmark's evaluation configs, three ways:

- ``as_trained``: the vector as the network computes it (reproduces the run's own evaluation);
- ``mean``: every image gets the mean of the vectors of the evaluated images (no per-image context left,
  inputs still at the centre of what the classifier saw);
- ``swapped``: every image gets the vector of an image half the split away, another patient's (wrong
  context).

If the classification figures fall when the context is removed or swapped, the classifier reads it; if
precision rises when it is removed, the per-image vector was lifting the scores of wrong regions. The run's
folder is only read: everything is written under ``output_dir``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.experiments.ssl_benchmark import CONFIG_DIR, evaluation_config_files, run_workflow

__all__ = ["GlobalVectorProbe", "ABLATION_MODES", "ABLATION_METRICS", "evaluate_with_probe", "ablate_global_context"]

logger = logging.getLogger(__name__)

ABLATION_MODES = ("as_trained", "mean", "swapped")
# what the ablation compares: the protocol's figures at 0.7, the ranking, and the two halves of the task
ABLATION_METRICS = {
    "test_mean_precision": "mean precision",
    "test_mean_sensitivity": "mean sensitivity",
    "test_mean_f1": "mean F1 at 0.7",
    "test_localization_f1": "localization F1",
    "test_classification_mean_f1": "classification F1",
    "test_ap50": "AP50",
    "test_operating_mean_f1": "mean F1 at the validation threshold",
}


class GlobalVectorProbe:
    """Record, and optionally replace, the global vectors a network's classifier receives.

    A forward hook on the network's ``global_embedding`` (:class:`~malignet_bundle.networks.global_features.
    GlobalFeatureEmbedding`): each call's (N, G) output is kept, on the CPU, in :attr:`vectors`; with
    ``replacement`` the output is replaced by its next N rows, in the order the images pass.

    Args:
        network: a MaligNet built with ``global_features=True``.
        replacement: (K, G) vectors to hand out instead of the computed ones, one per image in order; K must
            cover every image the network sees while the probe is active.

    Raises:
        ValueError: when the network has no global embedding, or ``replacement`` runs out or has another width.
    """

    def __init__(self, network: nn.Module, replacement: Tensor | None = None) -> None:
        embedding = getattr(network, "global_embedding", None)
        if not isinstance(embedding, nn.Module):
            raise ValueError(
                f"{type(network).__name__} has no global feature embedding (built with global_features=False?); "
                "there is no per-image vector to probe"
            )
        self.embedding = embedding
        self.replacement = replacement
        self.vectors: list[Tensor] = []
        self.used = 0
        self._handle: RemovableHandle | None = None

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        self.vectors.append(output.detach().float().cpu())
        if self.replacement is None:
            return None
        count = output.shape[0]
        if self.replacement.shape[1:] != output.shape[1:]:
            raise ValueError(
                f"replacement vectors of shape {tuple(self.replacement.shape[1:])}, "
                f"the network computes {tuple(output.shape[1:])}"
            )
        if self.used + count > len(self.replacement):
            raise ValueError(
                f"{len(self.replacement)} replacement vectors, the network asked for more "
                f"({self.used + count}); the evaluation saw other images than the recorded pass"
            )
        rows = self.replacement[self.used : self.used + count]
        self.used += count
        return rows.to(device=output.device, dtype=output.dtype)

    @property
    def recorded(self) -> Tensor:
        """(images, G): every vector computed while the probe was active, in order."""
        return torch.cat(self.vectors) if self.vectors else torch.empty(0)

    def __enter__(self) -> GlobalVectorProbe:
        self._handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _evaluation_files(run_dir: Path) -> list[Path]:
    """The benchmark's evaluation configs of ``run_dir``, in the order ``execute_run`` merges them."""
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        raise FileNotFoundError(f"{result_file}: no result, the run has not finished (or is not a benchmark run)")
    config_names = json.loads(result_file.read_text())["config_files"]
    matching = run_dir / "evaluation_overrides.json"
    return evaluation_config_files(
        [CONFIG_DIR / name for name in config_names],
        run_dir / "overrides.json",
        pixel_protocol=False,  # the ablation reads the lesion metrics only
        evaluation_overrides=matching if matching.is_file() else None,
    )


def evaluate_with_probe(
    run_dir: Path, output_dir: Path, replacement: Tensor | None = None, split: str = "test"
) -> tuple[dict, Tensor]:
    """Evaluate ``run_dir``'s model on one split, recording (and optionally replacing) its global vectors.

    Args:
        run_dir: a finished run folder of ``scripts/benchmark_ssl.py`` (``result.json``, ``overrides.json``,
            ``models/model.pt``); only read.
        output_dir: where this evaluation's report goes (``<output_dir>/evaluation``).
        replacement: see :class:`GlobalVectorProbe`.
        split: the run's datalist split to evaluate: ``test``, or ``labeled`` (the images it was trained on).

    Returns:
        The evaluation's metrics (named ``test_*`` whatever the split) and the (images, G) vectors the network computed.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    redirect = output_dir / "redirect.json"  # the run's own outputs stay as they are
    redirect_to = {"output_dir": str(output_dir), "evaluation_dir": str(output_dir / "evaluation"), "test_split": split}
    write_json_atomic(redirect_to, redirect)
    probes: list[GlobalVectorProbe] = []

    def probe_network(workflow: Any) -> GlobalVectorProbe:
        probes.append(GlobalVectorProbe(workflow.parser.get_parsed_content("network"), replacement))
        return probes[-1]

    run_workflow([*_evaluation_files(run_dir), redirect], "evaluating", None, around_run=probe_network)
    (probe,) = probes
    if replacement is not None and probe.used != len(replacement):
        raise ValueError(
            f"{probe.used} of {len(replacement)} replacement vectors used: the evaluation saw "
            "other images than the recorded pass"
        )
    metrics = json.loads((output_dir / "evaluation" / "metrics.json").read_text())["metrics"]
    return metrics, probe.recorded


def ablate_global_context(run_dir: Path, output_dir: Path, split: str = "test") -> dict[str, Any]:
    """Evaluate ``run_dir`` under every :data:`ABLATION_MODES` and write ``<output_dir>/global_context.json``.

    On the ``labeled`` split (the training images) against the ``test`` split, it tells context the classifier
    learnt to read (the replacements cost on both) from vectors it memorised per training image (they cost
    on the training images only).

    Args:
        run_dir: a finished benchmark run of a row with global features (only read).
        output_dir: this run's ablation folder.
        split: the run's datalist split to evaluate (see :func:`evaluate_with_probe`).

    Returns:
        ``{"run", "images", "vector_spread", "modes": {mode: {metric: value}}}``; ``vector_spread`` is the mean
        distance of an image's vector from the mean vector, relative to the mean vector's norm (0: every image
        gets the same context).
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    logger.info("%s: evaluating with the global vectors as trained", run_dir.name)
    as_trained, vectors = evaluate_with_probe(run_dir, output_dir / "as_trained", split=split)
    if len(vectors) < 2:
        raise ValueError(f"{run_dir}: {len(vectors)} image(s) evaluated, the ablation needs two or more")
    centre = vectors.mean(dim=0, keepdim=True)
    replacements = {"mean": centre.expand_as(vectors).clone(), "swapped": vectors.roll(len(vectors) // 2, dims=0)}
    modes: dict[str, Mapping[str, float]] = {"as_trained": as_trained}
    for mode, replacement in replacements.items():
        logger.info("%s: evaluating with the %s global vectors", run_dir.name, mode)
        modes[mode], _ = evaluate_with_probe(run_dir, output_dir / mode, replacement, split)
    spread = float((vectors - centre).norm(dim=1).mean() / centre.norm().clamp_min(1e-12))
    result = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "split": split,
        "images": len(vectors),
        "vector_spread": spread,
        "modes": {m: {k: float(v[k]) for k in ABLATION_METRICS if k in v} for m, v in modes.items()},
    }
    write_json_atomic(result, output_dir / "global_context.json")
    return result


def ablation_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per run and metric, the value as trained and the change under each replacement.

    With several runs, then the mean change over them and its sign count (runs where the replacement raised /
    lowered the metric).
    """
    header = "| run | vector spread | metric | as trained | mean vector − as trained | swapped − as trained |"
    lines = [header, "|---|---|---|---|---|---|"]
    changes: dict[str, dict[str, list[float]]] = {k: {m: [] for m in ABLATION_MODES[1:]} for k in ABLATION_METRICS}
    for result in results:
        modes = result["modes"]
        for key, name in ABLATION_METRICS.items():
            if key not in modes["as_trained"]:
                continue
            base = modes["as_trained"][key]
            cells = []
            for mode in ABLATION_MODES[1:]:
                changes[key][mode].append(modes[mode][key] - base)
                cells.append(f"{modes[mode][key] - base:+.3f}")
            spread = f"{result['vector_spread']:.2f}"
            lines.append(f"| {result['run']} | {spread} | {name} | {base:.3f} | {' | '.join(cells)} |")
    if len(results) > 1:
        lines += ["", "| metric | runs | mean vector − as trained (+ / −) | swapped − as trained (+ / −) |"]
        lines.append("|---|---|---|---|")
        for key, name in ABLATION_METRICS.items():
            by_mode = changes[key]
            if not by_mode["mean"]:
                continue
            cells = [
                f"{sum(d) / len(d):+.3f} ({sum(x > 0 for x in d)} / {sum(x < 0 for x in d)})" for d in by_mode.values()
            ]
            lines.append(f"| {name} | {len(by_mode['mean'])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"

"""The semi-supervised evidence: thesis Table 4 ablation and the Fig. 19/20 data sweeps, through the bundle.

Every run is an ordinary bundle training (``configs/train.json``, with ``baseline.json`` for the rows
without the ladder, ``self_training.json`` for the self-training row and ``mean_teacher.json`` for the
mean-teacher rows) followed by the bundle evaluation
(``configs/evaluate.json``) on one fixed test split. What a run changes is written to its own folder as a
config file merged last (``overrides.json``) next to the datalist it trained on, so any single run can be
repeated with ``python -m monai.bundle run``. A run that finished has ``result.json`` and is skipped on the
next call; one that was interrupted resumes from its latest checkpoint (the bundle's ``resume``).

Deterministic preprocessing (DICOM read, chest detection, crop) is cached once per profile with MONAI's
``PersistentDataset``, so the runs differ only in what they are meant to differ in.

The evidence study is this benchmark at the learning curves' plateau budget (``cpu``: 1600 steps,
with ``configs/cpu.json``'s speed settings). Run folders are kept per step budget
(``<output_dir>/runs/steps<N>/<run>``), and every finished run's ``result.json`` is also copied to
``<results_dir>/<machine slug>/<profile>/steps<N>/<run>.json`` (:func:`study_result_path`), small JSON meant
to be committed: the study accumulates across sessions and machines without mixing them, a run already
committed for this machine is not trained again, and the report is rebuilt from those files on a fresh clone.
The report pairs runs of one machine only (:mod:`~malignet_bundle.experiments.study_statistics`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.checkpoint import FinishedRunError, prepare_resume
from malignet_bundle.experiments.study_statistics import (
    INTERVAL_METHODS,
    Side,
    compare,
    data_efficiency,
    machine_of,
    machine_slug,
)
from malignet_bundle.metrics.lesion import MATCHING_RULES, check_matching
from malignet_bundle.networks.malignet import LESION_ANCHOR_SIZES

__all__ = [
    "VARIANTS",
    "Variant",
    "MEAN_TEACHER_VARIANTS",
    "SEGMENTATION_VARIANTS",
    "dataset_generator_version",
    "COMPARISONS",
    "STUDY_METRICS",
    "PROFILES",
    "SWEEPS",
    "DEFAULT_SWEEPS",
    "VARIATIONS",
    "Profile",
    "RunSpec",
    "Variation",
    "plan_runs",
    "prepare_dataset",
    "subset_datalist",
    "config_files",
    "run_overrides",
    "run_workflow",
    "evaluation_config_files",
    "run_directory",
    "study_result_path",
    "load_study_results",
    "merge_results",
    "execute_run",
    "aggregate",
    "write_report",
    "with_steps",
    "study_comparisons",
    "study_data_efficiency",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class Variant(NamedTuple):
    """One benchmark row: the network and the semi-supervised method.

    New rows (e.g. segmentation baselines) add fields with defaults at the end, so positional uses stay valid.

    Attributes:
        row: the row's name (thesis Table 4 for the first five).
        ladder: ladder FPN (and its cost on unlabeled scans).
        global_features: global features in the box head.
        self_training: pseudo-labels from the trained model of :attr:`starts_from` (``self_training.json``).
        mean_teacher: an EMA teacher's pseudo-labels during training (``mean_teacher.json``).
        base: the row this one adds a semi-supervised method to (the same network without it); the study
            compares the two in pairs (:data:`COMPARISONS`). Empty for a supervised row.
        configs: further bundle config files (names in ``configs/``), merged after the method's and before
            the profile's (:func:`config_files`).
        segmentation: a pixel-level network (``segmentation.json``): its ``configs`` replace ``network_def``
            and the semi-supervised method, so they are merged after the profile's speed settings, and the
            detector's overrides (anchors, global features, the profile's ``network``) are not applied.
        starts_from: the row whose trained model of the same seed, data and variation this row starts from
            (:attr:`RunSpec.teacher`), for :attr:`Profile.continuation_iterations` more steps: the
            self-training's labeler, or the mean teacher's first teacher (no burn-in then). Empty: trained
            from the ImageNet backbone for the step budget.
    """

    row: str
    ladder: bool
    global_features: bool
    self_training: bool
    mean_teacher: bool = False
    base: str = ""
    configs: tuple[str, ...] = ()
    segmentation: bool = False
    starts_from: str = ""

    @property
    def unlabeled(self) -> bool:
        """Whether the run reads unlabeled scans (the ladder or the mean teacher)."""
        return self.ladder or self.mean_teacher


VARIANTS: dict[str, Variant] = {
    "fpn": Variant("ResNet + FPN (Mask R-CNN)", False, False, False),
    "fpn_global": Variant("ResNet + FPN w/ global features", False, True, False),
    "lfpn": Variant("ResNet + LFPN w/o global features", True, False, False, base="fpn"),
    "malignet": Variant("ResNet + LFPN w/ global features (MaligNet)", True, True, False, base="fpn_global"),
    "malignet_st": Variant("MaligNet + self-training", True, True, True, base="malignet", starts_from="malignet"),
    "fpn_mt": Variant("Mask R-CNN + mean teacher", False, False, False, mean_teacher=True, base="fpn"),
    "malignet_mt": Variant("MaligNet + mean teacher", True, True, False, mean_teacher=True, base="malignet"),
    # the teacher trained before it teaches (Result 5: a burnt-in student teaches its own errors): the trained
    # Mask R-CNN of the same seed is the first teacher and the student, as self-training starts from MaligNet
    "fpn_mt_warm": Variant(
        "Mask R-CNN + mean teacher from the trained Mask R-CNN",
        False,
        False,
        False,
        mean_teacher=True,
        base="fpn",
        starts_from="fpn",
    ),
    # the pixel-level networks of the related work (U-Net family, Double U-Net), read by both protocols
    "unet": Variant("U-Net (pixel-level)", False, False, False, configs=("segmentation.json",), segmentation=True),
    "unet_mt": Variant(
        "U-Net + mean teacher",
        False,
        False,
        False,
        mean_teacher=True,
        base="unet",
        configs=("segmentation.json", "segmentation_mean_teacher.json"),
        segmentation=True,
    ),
    "double_unet": Variant(
        "Double U-Net (pixel-level)",
        False,
        False,
        False,
        configs=("segmentation.json", "double_unet.json"),
        segmentation=True,
    ),
}
TABLE4_VARIANTS = ("fpn", "fpn_global", "lfpn", "malignet", "malignet_st")
# planned only when asked for (``variants``), then in every sweep beside the row without the teacher
MEAN_TEACHER_VARIANTS = ("fpn_mt", "malignet_mt", "fpn_mt_warm")
# planned only when asked for (``variants``), in the Table 4 sweep: the related work's baselines
SEGMENTATION_VARIANTS = ("unet", "unet_mt", "double_unet")
VARIANT_COLORS = {
    "fpn": "black",
    "fpn_global": "tab:orange",
    "lfpn": "tab:green",
    "malignet": "tab:blue",
    "malignet_st": "tab:purple",
    "fpn_mt": "tab:brown",
    "malignet_mt": "tab:cyan",
    "fpn_mt_warm": "tab:red",
    "unet": "tab:gray",
    "unet_mt": "tab:olive",
    "double_unet": "tab:pink",
}
SWEEPS = ("table4", "labeled", "unlabeled", "why")
DEFAULT_SWEEPS = ("table4", "labeled", "unlabeled")  # "why" is the follow-up investigation, run on demand
# the study's paired comparisons, (name, row, reference row): the headline, the global-feature classifier
# alone (with the ladder's row against its base, it splits MaligNet's difference into its two parts), then
# each semi-supervised row against its base (Variant.base); one without pairs is left out of the report
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("MaligNet vs Mask R-CNN", "malignet", "fpn"),
    ("global features vs Mask R-CNN", "fpn_global", "fpn"),
    *((f"{v} vs {variant.base}", v, variant.base) for v, variant in VARIANTS.items() if variant.base),
)
# the rows of the labeled-data sweep whose data efficiency against Mask R-CNN at 100 % is estimated
EFFICIENCY_VARIANTS = ("malignet", *MEAN_TEACHER_VARIANTS)
# the metrics the study compares; a tuple names the metric and the older name it replaces, tried in order
# (results from before the matching option hold the class-agnostic mean F1 as test_mean_f1 only)
STUDY_METRICS: dict[str, tuple[str, ...]] = {
    "AP50": ("test_ap50",),
    "FROC CPM": ("test_froc_cpm",),
    "mean F1 at 0.7, class-agnostic matching": ("test_mean_f1_class_agnostic_matching", "test_mean_f1"),
    "mean F1 at 0.7, per-class matching": ("test_mean_f1_per_class_matching",),
    "mean F1 at the validation threshold": ("test_operating_mean_f1",),
}
# Table 4 under both matching rules (metrics/lesion.py), reported side by side
MATCHING_METRICS = {
    f"test_mean_{k}_{rule}_matching": f"mean {name}, {rule.replace('_', '-')} matching"
    for rule in MATCHING_RULES
    for k, name in (("precision", "precision"), ("sensitivity", "sensitivity"), ("f1", "F1"))
}
# the Tables 4–7 figures the report shows, in this order (evaluate.json prefixes them with test_)
REPORTED_METRICS = {
    "test_mean_precision": "mean precision",
    "test_mean_sensitivity": "mean sensitivity",
    "test_mean_f1": "mean F1 (Table 4)",
    "test_localization_f1": "localization F1 (Table 5)",
    "test_classification_mean_f1": "classification F1 (Table 6)",
    "test_metastasis_patient_f1": "metastasis F1, patient (Table 7)",
    "test_ap50": "AP50",
    "test_froc_cpm": "FROC CPM",
    "test_pixel_dice": "pixel Dice",
    "test_best_mean_f1": "mean F1 at the best threshold (optimistic)",
}
# the pixel protocol of the related work (segmentation_evaluate.json): lesion pixels of any class and the
# malignant class against the rest; a detector's lesions are painted at its validation-chosen threshold
PIXEL_METRICS = {
    f"test_pixel_{group}_{score}": f"pixel {name} {label}"
    for group, label in (("lesion", "(any lesion)"), ("malignant", "(malignant vs rest)"))
    for score, name in (("dice", "DSC"), ("precision", "CPA"), ("sensitivity", "recall"))
}
# what the plots show: the thresholded headline metric and the threshold-free ranking one
PLOTTED_METRICS = {"test_mean_f1": "test mean F1 at 0.7", "test_ap50": "test AP50"}


@dataclass(frozen=True)
class Profile:
    """One benchmark size: dataset, network, schedule, seeds and sweep points.

    Args:
        name: profile name (``cpu``, ``full``, ``smoke``).
        description: what was made smaller than the thesis, stated in every report.
        dataset: ``write_dataset`` arguments (split sizes in studies, generator seed).
        network: overrides of ``network_def`` (backbone, pyramid width, anchors, …).
        image_size: chest-crop side in pixels.
        iterations: labeled-batch iterations per training run (rounded up to whole epochs).
        continuation_iterations: iterations of a row that starts from another row's trained model
            (:attr:`Variant.starts_from`: the self-training student, the warm-started mean teacher).
        batch_size: labeled (and unlabeled) images per iteration.
        warmup_iterations: linear learning-rate warm-up.
        seeds: training seeds; each also draws the labeled/unlabeled subsets of the sweeps.
        labeled_fractions: Fig. 19 points, fractions of the labeled split.
        unlabeled_fractions: Fig. 20 points, fractions of the unlabeled split.
        chest_epochs: epochs of the chest detector trained when none is given.
        extra: further bundle overrides of every run.
        mean_teacher: overrides of the mean-teacher rows (burn-in and EMA decay sized to ``iterations``;
            :func:`with_steps` rescales them with the budget).
        config_files: bundle config files (names in ``configs/``) merged after the row's, before the run's
            overrides (``cpu``: ``cpu.json``'s speed settings, bf16 autocast where the CPU has native bf16
            kernels).
        generator_version: the synthetic generator version of the profile's dataset (``data/synthesize.py``);
            a dataset made by another version is refused, and each result records the version it trained on.
        segmentation: overrides of the pixel-level rows, per config file they merge (``{"double_unet.json":
            {"segmentation_features": [...]}}``), applied in the row's merge order.
    """

    name: str
    description: str
    dataset: dict[str, int]
    network: dict[str, Any]
    image_size: int
    iterations: int
    continuation_iterations: int
    batch_size: int
    warmup_iterations: int
    seeds: tuple[int, ...]
    labeled_fractions: tuple[float, ...]
    unlabeled_fractions: tuple[float, ...]
    chest_epochs: int
    extra: dict[str, Any] = field(default_factory=dict)
    mean_teacher: dict[str, Any] = field(default_factory=dict)
    config_files: tuple[str, ...] = ()
    generator_version: int = 1
    segmentation: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def data_name(self) -> str:
        """The default folder name of the profile's dataset and runs: ``<name>-v<generator version>``.

        Runs of one generator version never resume from, or get skipped for, another's.
        """
        return f"{self.name}-v{self.generator_version}"


def _scaled_anchors(image_size: int) -> list[list[int]]:
    """The bundle's lesion anchors rescaled from 320-pixel crops to ``image_size``."""
    return [[max(4, round(s * image_size / 320)) for s in sizes] for sizes in LESION_ANCHOR_SIZES]


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        description="thesis settings (Table 11): ResNet-50, 256-channel pyramid, 320 px crops, batch 16; for a GPU",
        dataset={"labeled": 200, "unlabeled": 2000, "validation": 50, "test": 200, "seed": 2024},
        network={},
        image_size=320,
        iterations=12000,
        continuation_iterations=6000,
        batch_size=16,
        warmup_iterations=500,
        seeds=(0, 1, 2),
        labeled_fractions=(0.25, 0.5, 0.75, 1.0),
        unlabeled_fractions=(0.0, 0.25, 0.5, 1.0),
        chest_epochs=30,
        # Unbiased Teacher's COCO 1 % schedule: 2000 burn-in steps, decay 0.9996 (mean_teacher.json's defaults)
        mean_teacher={"mean_teacher_burn_in": 2000, "ema_decay": 0.9996},
        generator_version=2,
    ),
    "cpu": Profile(
        name="cpu",
        description=(
            "CPU-sized: ResNet-18 backbone, 64-channel pyramid, 256-wide box head, 192 px chest crops, "
            "batch 4, configs/cpu.json's speed settings (bf16 autocast on CPUs with native bf16 kernels), "
            "synthetic generator version 2 (thesis: ResNet-50, 256 channels, 1024, 320 px, batch 16)"
        ),
        dataset={"labeled": 32, "unlabeled": 320, "validation": 10, "test": 30, "seed": 2024},
        network={
            "backbone": "resnet18",
            "pyramid_channels": 64,
            "representation_size": 256,
            "global_channels": 128,
            "box_batch_size_per_image": 64,
        },
        image_size=192,
        # the learning curves' plateau (docs/BENCHMARKS.md): Mask R-CNN flat from ~1000-1300 steps, MaligNet's
        # AP50 from 960; Results 1-3 were read at 200 and 600 steps, on the rising part of both curves
        iterations=1600,
        continuation_iterations=800,
        batch_size=4,
        warmup_iterations=25,
        seeds=(0, 1, 2),
        labeled_fractions=(0.25, 0.5, 1.0),
        unlabeled_fractions=(0.0, 0.25, 1.0),
        chest_epochs=25,
        # half the 1600 steps supervised; a decay whose time constant (800 steps) is the teaching half, since
        # 0.9996 would leave the teacher mostly the burnt-in student at the end
        mean_teacher={"mean_teacher_burn_in": 800, "ema_decay": 0.99875},
        config_files=("cpu.json",),
        # the gamma-camera generator, whose scans match real ones (docs/BENCHMARKS.md, realism); Results 1-3
        # and the learning curves were read on version 1
        generator_version=2,
    ),
    "smoke": Profile(
        name="smoke",
        description="test-suite smoke run: tiny data, tiny network, 2 iterations; the numbers mean nothing",
        dataset={"labeled": 4, "unlabeled": 4, "validation": 1, "test": 2, "seed": 11},
        network={
            "backbone": "resnet18",
            "pyramid_channels": 16,
            "representation_size": 32,
            "global_channels": 16,
            "box_batch_size_per_image": 16,
            "rpn_batch_size_per_image": 32,
        },
        image_size=96,
        iterations=2,
        continuation_iterations=1,
        batch_size=2,
        warmup_iterations=1,
        seeds=(0, 1),
        labeled_fractions=(0.5, 1.0),
        unlabeled_fractions=(0.0, 1.0),
        chest_epochs=1,
        mean_teacher={"mean_teacher_burn_in": 1, "ema_decay": 0.5},
        generator_version=2,
        segmentation={
            "segmentation.json": {"segmentation_features": [8, 8, 16, 32, 64, 8]},
            "double_unet.json": {"segmentation_features": [8, 16, 32]},
        },
    ),
}


@dataclass(frozen=True)
class Variation:
    """One change to the recipe, for the ``why`` sweep: does it move MaligNet against the supervised row?

    Args:
        description: what changes, as the report states it.
        overrides: bundle config overrides, merged after the profile's.
        iterations_factor: multiplies the profile's step budget.
        variants: the Table 4 variants trained with the change; the supervised row as well when the change
            is not specific to the ladder, so the comparison stays like for like.
    """

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    iterations_factor: float = 1.0
    variants: tuple[str, ...] = ("malignet",)


# the knobs the issue names (noise ratio, λ_us, target normalisation, unlabeled-to-labeled ratio) and the schedule
VARIATIONS: dict[str, Variation] = {
    "steps3x": Variation("3× the step budget", iterations_factor=3.0, variants=("fpn", "malignet")),
    "noise0.1": Variation("LFPN noise ratio 0.1 (Table 11: 0.03)", {"noise_ratio": 0.1}),
    "noise0.3": Variation("LFPN noise ratio 0.3", {"noise_ratio": 0.3}),
    "ladder_weight0.1": Variation("ladder cost weight λ_us 0.1 (default 1)", {"loss_weights#loss_ladder": 0.1}),
    "ladder_weight10": Variation("ladder cost weight λ_us 10", {"loss_weights#loss_ladder": 10.0}),
    "raw_targets": Variation("LFPN clean targets not normalised", {"network_def#normalize_targets": False}),
    "unlabeled_x2": Variation("2 unlabeled batches per labeled batch (default 1)", {"unlabeled_batches": 2}),
    # the one knob that raised mean F1 at 200 steps, tried where the schedule no longer dominates
    "steps3x_ladder_weight0.1": Variation(
        "3× the step budget and λ_us 0.1", {"loss_weights#loss_ladder": 0.1}, iterations_factor=3.0
    ),
    # the global vector with few labeled views (Result 5: memorised on the training views, precision lost):
    # made costly to memorise, or given less room
    "global_dropout0.5": Variation(
        "dropout 0.5 on the global vector in training (default none)", {"network_def#global_dropout": 0.5}
    ),
    "global_channels32": Variation(
        "global vector 32 wide (profiles: cpu 128, full 256)", {"network_def#global_channels": 32}
    ),
    # the mean teacher's guards against its runaway pseudo-lesion count (confirmation bias, Result 5):
    # trained for the teacher-student rows only, each compared with the unchanged row of its seed
    "mt_threshold0.9": Variation(
        "teacher confidence threshold 0.9 (default 0.7)", {"teacher_threshold": 0.9}, variants=MEAN_TEACHER_VARIANTS
    ),
    "mt_unsupervised_weight1": Variation(
        "pseudo-label loss weight 1 (default 4)",
        {"loss_weights#loss_unsupervised": 1.0},
        variants=MEAN_TEACHER_VARIANTS,
    ),
    "mt_cap3": Variation(
        "at most 3 pseudo-lesions per crop (default: no cap)",
        {"teacher_max_pseudo_lesions": 3},
        variants=MEAN_TEACHER_VARIANTS,
    ),
    # the control of a teacher-student row: the same schedule, EMA teacher and steps without learning from
    # pseudo-labels, so that the row's difference from it is what the pseudo-labels did
    "mt_unsupervised_weight0": Variation(
        "pseudo-label loss weight 0: the schedule and EMA teacher without pseudo-labels (control)",
        {"loss_weights#loss_unsupervised": 0.0},
        variants=MEAN_TEACHER_VARIANTS,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training + evaluation of a Table 4 variant with a seed.

    It uses fractions of the labeled and unlabeled data and, optionally, one :data:`VARIATIONS` change.
    """

    variant: str
    seed: int
    labeled_fraction: float = 1.0
    unlabeled_fraction: float = 1.0
    variation: str = ""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {list(VARIANTS)}")
        if self.variation and self.variation not in VARIATIONS:
            raise ValueError(f"unknown variation {self.variation!r}; choose from {list(VARIATIONS)}")
        if not VARIANTS[self.variant].unlabeled:  # without the ladder or a teacher nothing reads unlabeled scans
            object.__setattr__(self, "unlabeled_fraction", 0.0)

    @property
    def name(self) -> str:
        """Folder name, unique per run."""
        unlabeled = f"-u{self.unlabeled_fraction:g}" if VARIANTS[self.variant].unlabeled else ""
        variation = f"-{self.variation}" if self.variation else ""
        return f"{self.variant}-l{self.labeled_fraction:g}{unlabeled}-s{self.seed}{variation}"

    @property
    def teacher(self) -> RunSpec | None:
        """The run whose trained model this one starts from (:attr:`Variant.starts_from`), else None.

        Same seed and data; the same variation where it applies to that row (a mean-teacher change does not
        apply to the Mask R-CNN it starts from).
        """
        start = VARIANTS[self.variant].starts_from
        if not start:
            return None
        variation = self.variation if self.variation and start in VARIATIONS[self.variation].variants else ""
        return RunSpec(start, self.seed, self.labeled_fraction, self.unlabeled_fraction, variation)


def plan_runs(
    profile: Profile,
    sweeps: Sequence[str] = DEFAULT_SWEEPS,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    variations: Sequence[str] | None = None,
) -> list[RunSpec]:
    """The runs of the chosen sweeps, seed by seed (so a partial run has whole seeds), without duplicates.

    The labeled sweep compares Mask R-CNN and MaligNet; the unlabeled sweep varies MaligNet's unlabeled
    scans with all labels. Their full-data points are the Table 4 runs and are trained once. The ``why``
    sweep trains each :data:`VARIATIONS` change (or only ``variations``) next to the unchanged runs it is
    compared with. Named ``variations`` (not the default ``None``) also apply to the labeled and unlabeled
    sweeps, where each change *replaces* the unchanged recipe on the rows it applies to (e.g. the mean
    teacher's Fig. 19 curve with a higher confidence threshold, next to the unchanged Mask R-CNN and
    MaligNet curves); Table 4 keeps the unchanged recipe. A run that starts from another's trained model
    (self-training, the warm-started mean teacher) is preceded by that run.
    The :data:`MEAN_TEACHER_VARIANTS` are planned only when ``variants`` names them, and then in every sweep:
    Table 4's rows, the labeled and the unlabeled sweep's points, and the ``why`` sweep's unchanged
    references. The pixel-level :data:`SEGMENTATION_VARIANTS` are planned only when ``variants`` names them,
    beside Table 4's rows.
    """
    unknown = [s for s in sweeps if s not in SWEEPS]
    if unknown:
        raise ValueError(f"unknown sweeps {unknown}; choose from {list(SWEEPS)}")
    changes = list(VARIATIONS) if variations is None else list(variations)
    if set(changes) - set(VARIATIONS):
        raise ValueError(f"unknown variations {sorted(set(changes) - set(VARIATIONS))}; choose from {list(VARIATIONS)}")
    unknown_variants = sorted(set(variants or ()) - set(VARIANTS))
    if unknown_variants:
        raise ValueError(f"unknown variants {unknown_variants}; choose from {list(VARIANTS)}")
    teachers = tuple(v for v in MEAN_TEACHER_VARIANTS if v in (variants or ()))
    pixel_level = tuple(v for v in SEGMENTATION_VARIANTS if v in (variants or ()))

    def changed(sweep_runs: list[RunSpec]) -> list[RunSpec]:
        """``sweep_runs`` with each named change in place of the unchanged recipe of the rows it applies to."""
        if variations is None:
            return sweep_runs
        found = []
        for run in sweep_runs:
            applying = [k for k in changes if run.variant in VARIATIONS[k].variants]
            found += [replace(run, variation=k) for k in applying] if applying else [run]
        return found

    runs: list[RunSpec] = []
    for seed in profile.seeds if seeds is None else seeds:
        wanted: list[RunSpec] = []
        if "table4" in sweeps:
            wanted += [RunSpec(v, seed) for v in (*TABLE4_VARIANTS, *teachers, *pixel_level)]
        if "labeled" in sweeps:
            pairs = ("fpn", "malignet", *teachers)
            wanted += changed([RunSpec(v, seed, f) for f in profile.labeled_fractions for v in pairs])
        if "unlabeled" in sweeps:
            points = [RunSpec(v, seed, 1.0, f) for v in ("malignet", *teachers) for f in profile.unlabeled_fractions]
            wanted += changed(points)
        if "why" in sweeps:
            wanted += [RunSpec(v, seed) for v in ("fpn", "malignet", *teachers)]
            wanted += [
                RunSpec(v, seed, variation=k)
                for k in changes
                for v in VARIATIONS[k].variants
                if v not in MEAN_TEACHER_VARIANTS or v in teachers
            ]
        if variants is not None:
            wanted = [r for r in wanted if r.variant in variants]
        for run in wanted:
            for needed in (run.teacher, run):
                if needed is not None and needed not in runs:
                    runs.append(needed)
    return runs


def dataset_generator_version(dataset_dir: Path) -> int | None:
    """The synthetic generator version recorded in ``dataset_dir/dataset.json``; None for other data.

    Raises:
        ValueError: for a ``dataset.json`` that cannot be read, naming the file and the reason.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable dataset summary ({e})") from e
    # datasets written before versions were named were all made by version 1
    return int(summary.get("generator_version", 1)) if isinstance(summary, dict) else None


def prepare_dataset(profile: Profile, dataset_dir: Path, chest_detector: Path, metadata: Path) -> None:
    """Synthesise the profile's dataset and train its chest detector unless they are already there.

    Raises:
        ValueError: when ``dataset_dir`` holds a synthetic dataset of another generator version than the
            profile's, naming its ``dataset.json``: its runs would be read as the profile's.
    """
    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.data.synthesize import write_dataset
    from malignet_bundle.engines.chest_detector import train_chest_detector

    if (dataset_dir / "datalist.json").is_file():
        version = dataset_generator_version(dataset_dir)
        if version is not None and version != profile.generator_version:
            raise ValueError(
                f"{dataset_dir / 'dataset.json'}: made by synthetic generator version {version}, the "
                f"{profile.name} profile trains on version {profile.generator_version}; give another --dataset_dir"
            )
    else:
        splits = {k: v for k, v in profile.dataset.items() if k != "seed"}
        logger.info(
            "synthesising the %s-profile dataset (generator version %d) in %s: %s",
            profile.name,
            profile.generator_version,
            dataset_dir,
            splits,
        )
        write_dataset(
            dataset_dir,
            **splits,
            seed=profile.dataset["seed"],
            workers=min(4, os.cpu_count() or 1),
            progress=True,
            version=profile.generator_version,
        )
    if not chest_detector.is_file():
        logger.info("training the chest detector for %s (%d epochs)", dataset_dir, profile.chest_epochs)
        train_chest_detector(
            load_datalist(dataset_dir / "datalist.json"),
            dataset_dir,
            ClassMap.from_metadata(metadata),
            chest_detector,
            epochs=profile.chest_epochs,
        )


def _patients(items: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(str(item.get("patient_id", item["image"])), None)
    return list(seen)


def _take_patients(items: list[dict], fraction: float, rng: np.random.Generator) -> list[dict]:
    """All views of a random ``fraction`` of the patients (at least one patient when fraction > 0)."""
    if fraction >= 1.0:
        return list(items)
    patients = _patients(items)
    count = max(1, round(fraction * len(patients))) if fraction > 0 else 0
    chosen = set(rng.permutation(patients)[:count].tolist())
    return [item for item in items if str(item.get("patient_id", item["image"])) in chosen]


def subset_datalist(datalist: Mapping[str, list[dict]], run: RunSpec) -> dict[str, list[dict]]:
    """The run's datalist: labeled and unlabeled patients drawn by the run's seed; validation and test whole.

    The same seed draws the same patients for every variant, so the variants of one seed see the same scans.
    """
    rng = np.random.default_rng(10_000 + run.seed)
    labeled = _take_patients(datalist["labeled"], run.labeled_fraction, rng)
    unlabeled = _take_patients(datalist["unlabeled"], run.unlabeled_fraction, rng)
    return {**datalist, "labeled": labeled, "unlabeled": unlabeled}


def config_files(run: RunSpec, profile: Profile | None = None) -> list[Path]:
    """The bundle config files of ``run``, in merge order, before its ``overrides.json``.

    Args:
        run: the run (its variant decides the method configs).
        profile: the benchmark profile; its :attr:`Profile.config_files` come last (``cpu``: ``cpu.json``).
            None: the row's configs only.

    Returns:
        ``train.json``, then ``baseline.json`` without the ladder, ``self_training.json`` or
        ``mean_teacher.json`` for those methods, the variant's own :attr:`Variant.configs`, the profile's.
        A pixel-level row: ``train.json``, the profile's, then its own (``segmentation.json`` replaces the
        detector that the profile's speed settings size).
    """
    variant = VARIANTS[run.variant]
    profile_files = [CONFIG_DIR / name for name in profile.config_files] if profile is not None else []
    if variant.segmentation:
        return [CONFIG_DIR / "train.json", *profile_files, *(CONFIG_DIR / name for name in variant.configs)]
    files = [CONFIG_DIR / "train.json"]
    if not variant.ladder:
        files.append(CONFIG_DIR / "baseline.json")
    if variant.self_training:
        files.append(CONFIG_DIR / "self_training.json")
    if variant.mean_teacher:
        files.append(CONFIG_DIR / "mean_teacher.json")
    files += [CONFIG_DIR / name for name in variant.configs]
    return files + profile_files


_config_files = config_files  # the name experiments/learning_curve.py imports


def run_directory(output_dir: Path, profile: Profile, run: RunSpec) -> Path:
    """Where ``run`` trains: ``<output_dir>/runs/steps<N>/<run.name>``, one folder per step budget.

    The budget is in the path because the run's name does not hold it: a finished run of another budget
    must not be taken for this one.
    """
    return output_dir / "runs" / f"steps{profile.iterations}" / run.name


def study_result_path(results_dir: Path, trained_on: str, profile: Profile, run: RunSpec) -> Path:
    """Where the study keeps ``run``'s result: ``<results_dir>/<machine slug>/<profile>/steps<N>/<run.name>.json``.

    Args:
        results_dir: the study's folder of results (``docs/results/study``).
        trained_on: the machine (:func:`machine_description`), one folder each (:func:`machine_slug`).
        profile: the profile; its name and step budget are folders, so budgets never mix.
        run: the run.
    """
    return results_dir / machine_slug(trained_on) / profile.name / f"steps{profile.iterations}" / f"{run.name}.json"


def load_study_results(results_dir: Path, profile: Profile) -> list[dict[str, Any]]:
    """Every result the study holds for ``profile`` at its step budget, of every machine.

    Args:
        results_dir: the study's folder of results.
        profile: the profile (name and ``iterations`` select the folders).

    Returns:
        The results, ordered by path (machine, then run); those trained on another synthetic generator version
        than the profile's are left out (with a warning), so data versions never mix in one report.

    Raises:
        ValueError: for a file that is not a readable result, naming the file and the reason.
    """
    results = []
    other_versions: list[str] = []
    for path in sorted(results_dir.glob(f"*/{profile.name}/steps{profile.iterations}/*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable result JSON ({e})") from e
        if not isinstance(result, dict) or not {"run", "metrics"} <= set(result):
            raise ValueError(f"{path}: not a benchmark result (no 'run' and 'metrics')")
        if result.get("steps", profile.iterations) != profile.iterations:
            raise ValueError(f"{path}: trained for {result['steps']} steps, kept under steps{profile.iterations}")
        # results from before versions were recorded were trained on version 1
        version = result.get("generator_version", 1)
        if version is not None and version != profile.generator_version:
            other_versions.append(path.name)
            continue
        results.append(result)
    if other_versions:
        logger.warning(
            "left out %d results of another synthetic generator version than %d: %s",
            len(other_versions),
            profile.generator_version,
            ", ".join(other_versions),
        )
    return results


def merge_results(*groups: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One result per (machine, run name), the first group's first: a run kept in two places counts once."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for group in groups:
        for result in group:
            merged.setdefault((machine_of(result), result["name"]), dict(result))
    return list(merged.values())


def with_steps(profile: Profile, steps: int) -> Profile:
    """``profile`` with a step budget of ``steps``; self-training and the mean teacher's schedule scale with it.

    The self-training student's steps, the mean teacher's burn-in and its EMA time constant ``1 / (1 − decay)``
    keep their share of the budget.

    Args:
        profile: the profile.
        steps: labeled-batch iterations per training.

    Raises:
        ValueError: for fewer than one step.
    """
    if steps < 1:
        raise ValueError(f"the step budget must be at least 1, got {steps}")
    factor = steps / profile.iterations
    teacher = dict(profile.mean_teacher)
    if "mean_teacher_burn_in" in teacher:
        teacher["mean_teacher_burn_in"] = round(teacher["mean_teacher_burn_in"] * factor)
    if "ema_decay" in teacher:
        teacher["ema_decay"] = max(0.0, 1.0 - (1.0 - teacher["ema_decay"]) / factor)
    return replace(
        profile,
        iterations=steps,
        continuation_iterations=max(1, round(profile.continuation_iterations * factor)),
        mean_teacher=teacher,
    )


def _persistent_datasets(node: Any, cache_root: Path, path: str = "") -> Any:
    """``node`` with every ``CacheDataset`` swapped for a ``PersistentDataset`` caching under ``cache_root``.

    One cache folder per config id, because MONAI keys the cache by the data item only and the same view
    goes through different deterministic chains in training and validation.
    """
    if isinstance(node, dict):
        if node.get("_target_") == "CacheDataset":
            return {
                "_target_": "PersistentDataset",
                "data": node["data"],
                "transform": node["transform"],
                "cache_dir": str(cache_root / path.replace("#", "_")),
            }
        return {k: _persistent_datasets(v, cache_root, f"{path}#{k}" if path else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_persistent_datasets(v, cache_root, f"{path}#{i}") for i, v in enumerate(node)]
    return node


def _schedule(iterations: int, labeled_views: int, batch_size: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) for about ``iterations`` steps: an epoch is one pass over the labeled views."""
    per_epoch = max(1, math.ceil(labeled_views / batch_size))
    return max(1, math.ceil(iterations / per_epoch)), per_epoch


def run_overrides(
    run: RunSpec,
    profile: Profile,
    dataset_dir: Path,
    run_dir: Path,
    chest_detector: Path,
    cache_dir: Path,
    datalist: Mapping[str, list[dict]],
) -> dict[str, Any]:
    """The config merged last for ``run``: paths, schedule, network variant and cached datasets."""
    from monai.bundle import ConfigParser

    variant = VARIANTS[run.variant]
    variation = VARIATIONS[run.variation] if run.variation else Variation("")
    iterations = profile.continuation_iterations if variant.starts_from else profile.iterations
    iterations = round(iterations * variation.iterations_factor)
    epochs, epoch_length = _schedule(iterations, len(datalist["labeled"]), profile.batch_size)
    overrides: dict[str, Any] = {
        "dataset_dir": str(dataset_dir),
        "data_list_file_path": str(run_dir / "datalist.json"),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir),
        "chest_detector_path": str(chest_detector),
        "seed": run.seed,
        "epochs": epochs,
        "val_interval": epochs,  # one validation at the end: model.pt is the final model, not a lucky epoch
        # fixed, because self-training's epochs also hold the pseudo-labeled scans: same budget for every row
        "train#trainer#epoch_length": epoch_length,
        "batch_size": profile.batch_size,
        "image_size": profile.image_size,
        "warmup_iterations": profile.warmup_iterations,
    }
    if variant.segmentation:
        for name in variant.configs:
            overrides.update(profile.segmentation.get(name, {}))
        if variant.mean_teacher:
            # the student learns from labels before the consistency term reaches full strength (at 40 % of
            # the budget, whatever the budget), and the teacher averages about the last 100 steps
            overrides.update({"consistency_ramp_up": max(1, round(0.4 * iterations)), "ema_decay": 0.99})
    else:
        overrides.update(
            {
                "network_def#global_features": variant.global_features,
                "network_def#anchor_sizes": _scaled_anchors(profile.image_size),
                **{f"network_def#{k}": v for k, v in profile.network.items()},
                **(profile.mean_teacher if variant.mean_teacher else {}),
            }
        )
    overrides.update({**profile.extra, **variation.overrides})
    if variant.unlabeled and not datalist["unlabeled"]:
        overrides["train#trainer#unlabeled_data_loader"] = None
        overrides["train#unlabeled_dataset#data"] = []
    if variant.starts_from:
        teacher = run.teacher
        assert teacher is not None
        trained = str(run_dir.parent / teacher.name / "models" / "model.pt")
        if variant.self_training:  # the labeler's weights, which the student starts from as well
            overrides["pretrained_checkpoint"] = trained
        else:  # student and first teacher (a copy of the student at the first step): the trained model
            overrides["initial_weights"] = trained
        if variant.mean_teacher:
            overrides["mean_teacher_burn_in"] = 0  # the teacher is trained already
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files(run, profile)])
    if variant.self_training and "pseudo_summary_file" in parser:
        # what the teacher gave its student (images kept, lesions, empty scans), read into result.json
        overrides["pseudo_summary_file"] = str(run_dir / "pseudo_labels.json")
    for key, value in overrides.items():
        parser[key] = value
    for key in ("train#dataset", "train#unlabeled_dataset", "validate#dataset", "train#pseudo_source"):
        if key in parser:
            replaced = _persistent_datasets(parser[key], cache_dir, key)
            if replaced != parser[key]:
                overrides[key] = replaced
    return overrides


def evaluation_config_files(
    training_configs: Sequence[Path],
    overrides_file: Path,
    pixel_protocol: bool = True,
    evaluation_overrides: Path | None = None,
) -> list[Path]:
    """The config files of a run's evaluation, in the order they are merged.

    The one place that order is written: the benchmark, the learning curves and the global-context ablation
    all evaluate through it, so that a run evaluated again reads exactly as its own evaluation did.

    Args:
        training_configs: the run's training configs from ``configs/`` (without its overrides), in order.
        overrides_file: the run's ``overrides.json``, merged after the evaluation configs so the run's own
            settings (network, threshold, paths) hold.
        pixel_protocol: also ``segmentation_evaluate.json``, the related work's pixel protocol.
        evaluation_overrides: evaluation-only settings merged last (the matching rule's ids), if any.
    """
    files = [*training_configs, CONFIG_DIR / "evaluate.json"]
    # the lesion tables (evaluate.json) and the pixel protocol of the related work (segmentation_evaluate.json
    # paints a detector's lesions at its operating threshold)
    files += [CONFIG_DIR / "segmentation_evaluate.json"] if pixel_protocol else []
    files.append(overrides_file)
    return [*files, evaluation_overrides] if evaluation_overrides is not None else files


def run_workflow(
    files: Sequence[Path],
    run_id: str,
    tracking: str | None,
    around_run: Callable[[Any], AbstractContextManager] | None = None,
) -> None:
    """Run the bundle workflow ``run_id`` (``training`` or ``evaluating``) of ``files`` merged in order.

    Args:
        files: config files, the last one merged last.
        run_id: the workflow's run ID.
        tracking: ``"mlflow"`` to log through the bundle's tracking, else None.
        around_run: called with the initialized ``ConfigWorkflow``; the context manager it returns is held
            while the workflow runs (a probe on its network, say). None: nothing.
    """
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        run_id=run_id,
        tracking=tracking,
        workflow_type="train" if run_id == "training" else "infer",
    )
    workflow.initialize()
    with around_run(workflow) if around_run is not None else nullcontext():
        workflow.run()
    workflow.finalize()


_workflow = run_workflow  # the name experiments/learning_curve.py imports


# the lesion metrics whose matching rule the benchmark's evaluation sets (metrics/lesion.py, metrics/evaluation.py)
_MATCHING_METRICS_TARGETS = ("LesionF1", "LesionMetrics")


def _matching_overrides(files: Sequence[Path], matching: str) -> dict[str, str]:
    """``{"<id>#matching": matching}`` for every lesion metric of the merged ``files``, wherever it is defined.

    Found by its ``_target_`` rather than by a fixed id, so a reshaped ``evaluate.json`` keeps its rule.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).rsplit(".", 1)[-1] in _MATCHING_METRICS_TARGETS:
                found[f"{path}#matching"] = matching
            for key, value in node.items():
                walk(value, f"{path}#{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}#{index}")

    walk(parser.get(), "")
    return found


def _speed_settings(files: Sequence[Path]) -> dict[str, Any]:
    """What the merged ``files`` train with: bf16 autocast on the CPU (evaluated here) and the RPN's top-N.

    Recorded with each result, because they change the trained model (bf16 rounding) and ``cpu.json`` decides
    bf16 by the processor.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    settings = {"bf16_on_cpu": bool(parser.get_parsed_content("bf16_on_cpu", default=False))}
    for key in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train"):
        settings[key] = parser.get(f"network_def#{key}")
    return settings


def machine_description() -> str:
    """The processor, the CPU kernels torch dispatches to, the torch version and the GPU, in one line.

    Recorded with every run because the same code, seed and data train a different model on a processor whose
    vector kernels round differently (docs/BENCHMARKS.md, Result 2), so runs are comparable per machine.
    """
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    parts = [
        cpu,
        f"{torch.backends.cpu.get_cpu_capability()} kernels",
        f"{os.cpu_count()} cores",
        f"torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


def execute_run(
    run: RunSpec,
    profile: Profile,
    dataset_dir: Path,
    output_dir: Path,
    chest_detector: Path,
    tracking: str | None = None,
    reevaluate: bool = False,
    results_dir: Path | None = None,
    matching: str = "class_agnostic",
    need_model: bool = False,
) -> dict[str, Any]:
    """Train and evaluate ``run`` unless its result says it is done; returns that result.

    Args:
        run: what to train.
        profile: sizes, schedule and config files.
        dataset_dir: the dataset (``datalist.json`` inside).
        output_dir: benchmark folder; the run lives in :func:`run_directory`.
        chest_detector: chest detector weights.
        tracking: ``"mlflow"`` to log the run through the bundle's tracking, else None.
        reevaluate: evaluate a finished run again with its trained model (after a change to the evaluation).
        results_dir: the study's folder of results: the result is copied to :func:`study_result_path`, and a
            run whose result is kept there for this machine is not trained again (unless ``need_model``).
        matching: the matching rule of the evaluation's headline names (``evaluate.json``'s ``lesion_metrics``
            and key metric); Table 4's means are recorded under both rules either way.
        need_model: the trained model is needed (another run starts from it, :attr:`RunSpec.teacher`): a run
            kept only in ``results_dir`` is trained again (training is deterministic on one machine).

    Returns:
        The result: the run, its views, epochs and iterations, step budget, config files, speed settings,
        matching rule, seconds, machine, test metrics and the mean-F1 threshold curve.

    Raises:
        ValueError: for an unknown ``matching``.
    """
    check_matching(matching)
    run_dir = run_directory(output_dir, profile, run)
    result_path = run_dir / "result.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else None
    model_ready = (run_dir / "models" / "model.pt").is_file() and (run_dir / "trained").is_file()
    if previous is not None and not reevaluate and (model_ready or not need_model):
        return previous
    if previous is None and results_dir is not None and not need_model and not reevaluate:
        kept = study_result_path(results_dir, machine_description(), profile, run)
        if kept.is_file():
            logger.info("%s: kept for this machine in %s, not trained again", run.name, kept)
            return json.loads(kept.read_text(encoding="utf-8"))
    datalist = subset_datalist(load_datalist(dataset_dir / "datalist.json"), run)
    write_json_atomic(datalist, run_dir / "datalist.json")
    cache_dir = output_dir / "cache"
    overrides = run_overrides(run, profile, dataset_dir, run_dir, chest_detector, cache_dir, datalist)
    override_file = run_dir / "overrides.json"
    write_json_atomic(overrides, override_file)
    files = [*config_files(run, profile), override_file]
    # every row is read by both protocols, the lesion tables and the pixel protocol
    evaluation_files = evaluation_config_files(files[:-1], override_file)
    # evaluation only: evaluate.json's ids, which the training configs do not have
    evaluation_file = run_dir / "evaluation_overrides.json"
    write_json_atomic(_matching_overrides(evaluation_files, matching), evaluation_file)
    started = time.perf_counter()
    train_seconds = previous["train_seconds"] if previous is not None else None
    trained_on = previous.get("trained_on", "not recorded") if previous is not None else None
    if not model_ready:
        try:
            prepare_resume(run_dir / "models", overrides["epochs"])
        except FinishedRunError:  # killed after its last checkpoint, before it was marked trained
            logger.info("%s: training had finished before the interruption", run.name)
        else:
            run_workflow(files, "training", tracking)
        (run_dir / "trained").touch()
        train_seconds, trained_on = None, None
    trained = time.perf_counter()
    run_workflow([*evaluation_files, evaluation_file], "evaluating", tracking)
    evaluation = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    metrics = dict(evaluation["metrics"])
    pixel_file = run_dir / "evaluation" / "pixel_metrics.json"  # segmentation_evaluate.json's pixel protocol
    if pixel_file.is_file():
        pixel = json.loads(pixel_file.read_text())["metrics"]
        metrics.update({k: v for k, v in pixel.items() if k not in metrics})
    result = {
        "run": asdict(run),
        "name": run.name,
        "profile": profile.name,
        "steps": profile.iterations,
        "generator_version": dataset_generator_version(dataset_dir),
        "iterations": overrides["epochs"] * overrides["train#trainer#epoch_length"],
        "labeled_views": len(datalist["labeled"]),
        "unlabeled_views": len(datalist["unlabeled"]) if VARIANTS[run.variant].unlabeled else 0,
        "epochs": overrides["epochs"],
        "config_files": [f.name for f in files[:-1]],
        "speed_settings": _speed_settings(files),
        "matching": matching,
        "train_seconds": round(trained - started, 1) if train_seconds is None else train_seconds,
        "evaluate_seconds": round(time.perf_counter() - trained, 1),
        "trained_on": machine_description() if trained_on is None else trained_on,
        "metrics": metrics,
        "score_threshold_curve": evaluation["detail"]["score_threshold_curve"],
    }
    pseudo_labels = run_dir / "pseudo_labels.json"
    if VARIANTS[run.variant].self_training and pseudo_labels.is_file():
        result["pseudo_labels"] = json.loads(pseudo_labels.read_text())
    elif previous is not None and "pseudo_labels" in previous:
        result["pseudo_labels"] = previous["pseudo_labels"]
    write_json_atomic(result, result_path)
    if results_dir is not None:
        write_json_atomic(result, study_result_path(results_dir, result["trained_on"], profile, run))
    for checkpoint in (run_dir / "models").glob("latest_checkpoint_epoch=*.pt"):
        checkpoint.unlink()  # only needed to resume this run; model.pt stays (the teacher, the reproduction)
    return result


def _metric_value(result: Mapping[str, Any], key: str) -> float:
    """``key`` of the result's metrics; nan when absent.

    A result evaluated before the matching option has Table 4 under the class-agnostic rule only, under the
    plain names: those stand for the ``..._class_agnostic_matching`` names.
    """
    metrics = result["metrics"]
    if key in metrics:
        return float(metrics[key])
    suffix = "_class_agnostic_matching"
    if key.endswith(suffix) and result.get("matching", "class_agnostic") == "class_agnostic":
        return float(metrics.get(key[: -len(suffix)], np.nan))
    return float("nan")


def aggregate(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds, one row per (variant, labeled, unlabeled fraction, variation).

    Pass the results of one machine: the rows pool whatever they are given.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for result in results:
        r = result["run"]
        key = (r["variant"], r["labeled_fraction"], r["unlabeled_fraction"], r.get("variation", ""))
        groups.setdefault(key, []).append(result)
    rows = []
    for (variant, labeled, unlabeled, variation), members in groups.items():
        row: dict[str, Any] = {
            "variant": variant,
            "row": VARIANTS[variant].row,
            "labeled_fraction": labeled,
            "unlabeled_fraction": unlabeled,
            "variation": variation,
            "labeled_views": members[0]["labeled_views"],
            "unlabeled_views": members[0]["unlabeled_views"],
            "seeds": sorted(m["run"]["seed"] for m in members),
        }
        for key in (*REPORTED_METRICS, *MATCHING_METRICS, *PIXEL_METRICS):
            values = np.array([_metric_value(m, key) for m in members], dtype=float)
            row[key] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        row["train_minutes"] = float(np.mean([m["train_seconds"] for m in members]) / 60)
        rows.append(row)
    return rows


def _cell(row: Mapping[str, Any], key: str) -> str:
    if math.isnan(row[key]):
        return "—"
    std = row[f"{key}_std"]
    return f"{row[key]:.3f}" if math.isnan(std) else f"{row[key]:.3f} ± {std:.3f}"


def _table(
    rows: Sequence[Mapping[str, Any]],
    label: str,
    label_of: Any,
    metrics: Mapping[str, str] = REPORTED_METRICS,
    minutes: bool = True,
) -> str:
    header = [label, "seeds", *metrics.values(), *(["train min"] if minutes else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [label_of(row), str(len(row["seeds"]))]
        cells += [_cell(row, k) for k in metrics]
        if minutes:
            cells.append(f"{row['train_minutes']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find(
    rows: Sequence[Mapping[str, Any]], variant: str, labeled: float, unlabeled: float, variation: str = ""
) -> dict | None:
    unlabeled = unlabeled if VARIANTS[variant].unlabeled else 0.0
    wanted = (variant, labeled, unlabeled, variation)
    for row in rows:
        if (row["variant"], row["labeled_fraction"], row["unlabeled_fraction"], row["variation"]) == wanted:
            return dict(row)
    return None


def _uses_all_data(run: Mapping[str, Any]) -> bool:
    """Whether ``run`` (a :class:`RunSpec` as a dict) trained on every labeled and, if it uses them, unlabeled scan."""
    all_unlabeled = run["unlabeled_fraction"] == 1.0 or not VARIANTS[run["variant"]].unlabeled
    return run["labeled_fraction"] == 1.0 and all_unlabeled


def _changed_rows(
    results: Iterable[Mapping[str, Any]], selects: Callable[[Mapping[str, Any]], bool]
) -> list[tuple[str, str]]:
    """(variant, variation) of the changed rows with a run ``selects`` takes (given a result's ``run``).

    In the order of :data:`VARIANTS`, then of :data:`VARIATIONS`.
    """
    changed = {
        (r["run"]["variant"], r["run"]["variation"]) for r in results if r["run"].get("variation") and selects(r["run"])
    }
    return sorted(changed, key=lambda key: (list(VARIANTS).index(key[0]), list(VARIATIONS).index(key[1])))


def _swept_rows(
    results: Iterable[Mapping[str, Any]], fraction_key: str, variants: Sequence[str]
) -> list[tuple[str, str]]:
    """(variant, variation) of a data sweep's curves: each of ``variants`` unchanged, then each changed row.

    A changed row is one a named ``why`` change replaced in the sweep (:func:`plan_runs`), found by a run of
    it below 100 % of ``fraction_key`` (``labeled_fraction`` or ``unlabeled_fraction``).
    """
    changed = _changed_rows(results, lambda run: run["variant"] in variants and run[fraction_key] < 1.0)
    return [(v, "") for v in variants] + changed


def _why_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``why`` sweep: each change next to the unchanged run of the same variant and seeds.

    ``delta_<metric>`` (for the :data:`PLOTTED_METRICS`) is the mean over seeds of (changed − unchanged), a
    paired difference, so the seed-to-seed spread the changes share does not hide a consistent shift.
    """
    changed = [r for r in results if r["run"].get("variation") and _uses_all_data(r["run"])]
    seeds = {r["run"]["seed"] for r in changed}
    variants = {r["run"]["variant"] for r in changed}

    def is_reference(r: Mapping[str, Any]) -> bool:
        run = r["run"]
        return not run.get("variation") and _uses_all_data(run) and run["seed"] in seeds and run["variant"] in variants

    references = [r for r in results if is_reference(r)]
    value = {
        (r["run"]["variant"], r["run"].get("variation", ""), r["run"]["seed"], key): r["metrics"].get(key, np.nan)
        for r in [*references, *changed]
        for key in PLOTTED_METRICS
    }
    rows = []
    for row in aggregate([*references, *changed]):
        for key in PLOTTED_METRICS:
            pairs = [
                (value[(row["variant"], row["variation"], s, key)], value.get((row["variant"], "", s, key)))
                for s in row["seeds"]
            ]
            deltas = [a - b for a, b in pairs if b is not None]
            row[f"delta_{key}"] = float(np.mean(deltas)) if deltas and row["variation"] else float("nan")
        row["change"] = VARIATIONS[row["variation"]].description if row["variation"] else "unchanged"
        rows.append(row)
    order = ["", *VARIATIONS]  # unchanged first, then the changes in their listed order
    return sorted(rows, key=lambda r: (order.index(r["variation"]), r["variant"]))


def _plot_why(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from malignet_bundle.outputs.evaluation_report import save_figure

    fig, axes = plt.subplots(1, len(PLOTTED_METRICS), figsize=(11, 0.35 * len(rows) + 1.4), sharey=True)
    short = {"fpn": "Mask R-CNN", "malignet": "MaligNet"}
    labels = [f"{short.get(r['variant'], VARIANTS[r['variant']].row)}: {r['change']}" for r in rows]
    colors = [VARIANT_COLORS[r["variant"]] if r["variant"] != "fpn" else "tab:grey" for r in rows]
    y = np.arange(len(rows))[::-1]
    for ax, (key, label) in zip(axes, PLOTTED_METRICS.items(), strict=True):
        err = [0.0 if math.isnan(r[f"{key}_std"]) else r[f"{key}_std"] for r in rows]
        ax.barh(y, [r[key] for r in rows], xerr=err, color=colors, capsize=3)
        ax.set_xlabel(f"{label} (mean ± sd over seeds)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=7)
    fig.suptitle("One change at a time (why sweep; grey: Mask R-CNN, blue: MaligNet)")
    save_figure(fig, path)


def _plot_threshold_curves(results: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Mean F1 against the confidence threshold, mean ± sd over seeds, for every full-data row and change.

    Writes nothing when no result holds a curve (results from before it was recorded).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for result in results:
        run = result["run"]
        if "score_threshold_curve" in result and _uses_all_data(run):
            groups.setdefault((run["variant"], run.get("variation", "")), []).append(result["score_threshold_curve"])
    if not groups:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from malignet_bundle.outputs.evaluation_report import save_figure

    colors = VARIANT_COLORS
    styles = dict(
        zip(
            VARIATIONS,
            ("--", "-.", ":", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)), (0, (8, 2)), (0, (2, 2))),
            strict=False,
        )
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    order = ["", *VARIATIONS]
    for variant, variation in sorted(groups, key=lambda g: (order.index(g[1]), list(VARIANTS).index(g[0]))):
        curves = groups[(variant, variation)]
        x = np.asarray(curves[0]["thresholds"])
        y = np.asarray([c["mean_f1"] for c in curves])
        label = _row_label(variant, variation) + f" ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        style = dict(color=colors[variant], linestyle=styles.get(variation, "-"))
        ax.plot(x, y.mean(0), label=label, **style)
        if len(curves) > 1:
            sd = y.std(0, ddof=1)
            ax.fill_between(x, y.mean(0) - sd, y.mean(0) + sd, alpha=0.1, color=colors[variant])
    ax.axvline(0.7, color="tab:red", linewidth=0.8, label="operating point 0.7 (Table 11)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("detection confidence threshold")
    ax.set_ylabel("test mean F1 (Table 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title("Mean F1 against the confidence threshold: mean ± sd over seeds")
    save_figure(fig, path)


def _plot_sweep(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    x_key: str,
    x_label: str,
    title: str,
    path: Path,
    reference: Mapping[str, Any] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from malignet_bundle.outputs.evaluation_report import save_figure

    fig, axes = plt.subplots(1, len(PLOTTED_METRICS), figsize=(10, 3.8))
    for ax, (key, label) in zip(axes, PLOTTED_METRICS.items(), strict=True):
        for name, rows in series.items():
            if not rows:
                continue
            x = [r[x_key] for r in rows]
            err = [0.0 if math.isnan(r[f"{key}_std"]) else r[f"{key}_std"] for r in rows]
            ax.errorbar(x, [r[key] for r in rows], yerr=err, marker="o", capsize=3, label=name)
        if reference is not None:
            ax.axhline(reference[key], color="grey", linestyle="--", label=f"{reference['row']}, all labels")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: mean ± sd over seeds")
    save_figure(fig, path)


def _side(variant: str, labeled_fraction: float = 1.0, variation: str = "") -> Side:
    """The study's side of ``variant``: all unlabeled scans when it reads them (else the 0.0 runs record)."""
    return Side(variant, labeled_fraction, 1.0 if VARIANTS[variant].unlabeled else 0.0, variation)


def _row_label(
    variant: str, variation: str = "", labeled_fraction: float = 1.0, unlabeled_fraction: float = 1.0
) -> str:
    """The report's name of a row, with its ``why``-sweep change and its data when not all of it.

    Args:
        variant: the row.
        variation: its ``why``-sweep change, ``""`` for none.
        labeled_fraction: the share of the labeled patients it trained on.
        unlabeled_fraction: the share of the unlabeled patients (shown for a row that reads them).
    """
    label = VARIANTS[variant].row + (f", {VARIATIONS[variation].description}" if variation else "")
    if labeled_fraction < 1.0:
        label += f", {100 * labeled_fraction:g} % of the labels"
    if VARIANTS[variant].unlabeled and unlabeled_fraction < 1.0:
        label += f", {100 * unlabeled_fraction:g} % of the unlabeled scans"
    return label


def _variation_comparisons(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, Side, Side]]:
    """(name, changed row, reference row) for each ``why``-sweep change found in ``results`` at full data.

    A changed row is compared with its own unchanged row (did the change help?) and with the reference of
    the variant's first :data:`COMPARISONS` entry (does the changed row now beat what the unchanged one is
    judged against, e.g. Mask R-CNN for MaligNet?).
    """
    found = []
    for variant, variation in _changed_rows(results, _uses_all_data):
        side = _side(variant, variation=variation)
        found.append((f"{variant} {variation} vs {variant}", side, _side(variant)))
        headline = next((reference for _, v, reference in COMPARISONS if v == variant), None)
        if headline is not None:
            found.append((f"{variant} {variation} vs {headline}", side, _side(headline)))
    return found


def _sweep_comparisons(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, Side, Side]]:
    """(name, row, reference) at the data sweeps' points below full data; :func:`compare` drops those unpaired.

    Fig. 19: each row of the labeled sweep (:func:`_swept_rows`) against Mask R-CNN on the same share of the
    labels (the same patients: the seed draws them). Fig. 20: each row of the unlabeled sweep with a share of
    the unlabeled scans (100 % are its Table 4 runs) against itself with none, which is what the scans added;
    and each share below 100 % against Mask R-CNN, the thesis's flat line (at 100 % the row's Table 4
    comparisons stand: MaligNet's is against Mask R-CNN, a teacher–student row's against its base).
    """
    found = []
    labeled = sorted({r["run"]["labeled_fraction"] for r in results} - {1.0})
    for variant, variation in _swept_rows(results, "labeled_fraction", EFFICIENCY_VARIANTS):
        row = " ".join(filter(None, (variant, variation)))
        for fraction in labeled:
            name = f"{row} vs fpn at labeled {fraction:g}"
            found.append((name, _side(variant, fraction, variation), _side("fpn", fraction)))
    shares = sorted({r["run"]["unlabeled_fraction"] for r in results if r["run"]["labeled_fraction"] == 1.0} - {0.0})
    for variant, variation in _swept_rows(results, "unlabeled_fraction", ("malignet", *MEAN_TEACHER_VARIANTS)):
        row = " ".join(filter(None, (variant, variation)))
        for share in shares:
            name = f"{row} unlabeled {share:g} vs 0"
            found.append((name, Side(variant, 1.0, share, variation), Side(variant, 1.0, 0.0, variation)))
        for share in (s for s in (0.0, *shares) if s < 1.0):
            name = f"{row} unlabeled {share:g} vs fpn"
            found.append((name, Side(variant, 1.0, share, variation), _side("fpn")))
    return found


def study_comparisons(
    results: Sequence[Mapping[str, Any]], method: str = "t", confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """Every :data:`COMPARISONS` entry that has pairs, on every :data:`STUDY_METRICS` metric, full data.

    Then each ``why``-sweep change against its unchanged row and against that row's headline reference
    (:func:`_variation_comparisons`), and the data sweeps point by point (:func:`_sweep_comparisons`). Pairs
    never cross machines
    (:func:`~malignet_bundle.experiments.study_statistics.paired_differences`).

    Args:
        results: benchmark results of any machines, one step budget.
        method: the interval's method (:data:`~malignet_bundle.experiments.study_statistics.INTERVAL_METHODS`).
        confidence: the interval's level.
        seed: the bootstrap's random seed.

    Returns:
        :meth:`~malignet_bundle.experiments.study_statistics.ComparisonResult.as_dict` of each comparison and
        metric, with ``metric_label``, ``variant``, ``variation``, ``reference`` and ``reference_variation``
        added (the variations ``""`` for unchanged rows), and both sides' data fractions (``labeled_fraction``,
        ``unlabeled_fraction``, ``reference_labeled_fraction``, ``reference_unlabeled_fraction``).
    """
    entries = [(name, _side(variant), _side(reference)) for name, variant, reference in COMPARISONS]
    entries += _variation_comparisons(results)
    entries += _sweep_comparisons(results)
    found = []
    for name, side, reference in entries:
        for label, names in STUDY_METRICS.items():
            result = compare(results, name, side, reference, names, method, confidence, seed)
            if result.n:
                found.append(
                    {
                        **result.as_dict(),
                        "metric_label": label,
                        "variant": side.variant,
                        "variation": side.variation,
                        "reference": reference.variant,
                        "reference_variation": reference.variation,
                        "labeled_fraction": side.labeled_fraction,
                        "unlabeled_fraction": side.unlabeled_fraction,
                        "reference_labeled_fraction": reference.labeled_fraction,
                        "reference_unlabeled_fraction": reference.unlabeled_fraction,
                    }
                )
    return found


def study_data_efficiency(
    results: Sequence[Mapping[str, Any]], profile: Profile, confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """Fig. 19: the labeled fraction at which each :data:`EFFICIENCY_VARIANTS` row matches Mask R-CNN at 100 %.

    Args:
        results: benchmark results of any machines, one step budget.
        profile: its ``labeled_fractions`` are the curve's points.
        confidence: the interval's level.
        seed: the bootstrap's random seed.

    Returns:
        One :func:`~malignet_bundle.experiments.study_statistics.data_efficiency` per row and plotted metric
        that has at least one complete (machine, seed) unit, with ``variant``, ``variation`` (``""`` unless a
        named change replaced the row's recipe in the sweep) and ``metric_label`` added.
    """
    metrics = {
        "AP50": STUDY_METRICS["AP50"],
        "mean F1 at 0.7": STUDY_METRICS["mean F1 at 0.7, class-agnostic matching"],
    }
    found = []
    for variant, variation in _swept_rows(results, "labeled_fraction", EFFICIENCY_VARIANTS):
        curve = [_side(variant, f, variation) for f in sorted(profile.labeled_fractions)]
        for label, names in metrics.items():
            estimate = data_efficiency(results, curve, _side("fpn"), names, confidence, seed)
            if estimate["units"]:
                found.append({**estimate, "variant": variant, "variation": variation, "metric_label": label})
    return found


def _interval_text(low: float, high: float) -> str:
    return "—" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def _fraction_text(fraction: float, bound: str = "") -> str:
    if math.isnan(fraction):
        return "—"
    if math.isinf(fraction):
        return "> 100 %"
    return f"{'≤ ' if bound == 'at_most' else ''}{100 * fraction:.0f} %"


def _evidence_sections(
    comparisons: Sequence[Mapping[str, Any]],
    efficiency: Sequence[Mapping[str, Any]],
    labels: Mapping[str, str],
    method: str,
    confidence: float,
) -> list[str]:
    """The study's Markdown: paired comparisons and data efficiency, machines by their labels (M1, M2, …)."""
    interval = (
        "Student's t interval of the mean difference"
        if method == "t"
        else "percentile bootstrap of the mean difference (10 000 resamples, fixed seed)"
    )
    parts = [
        "### Evidence: paired differences",
        "",
        f"Each pair is two rows trained with the same seed on the same machine; pairs of several machines are "
        f"pooled, never a run of one machine with a run of another. Difference = row − reference; "
        f"{100 * confidence:g} % interval: {interval}. A difference is *established* only when its interval "
        "excludes zero. Sign count: pairs where the row is ahead / behind / level."
        + (
            " With few pairs the percentile bootstrap is narrower than the t interval (its resampled means "
            "never leave the range of the observed differences): below about ten pairs, read the t interval "
            "(--interval t, the default)."
            if method == "bootstrap"
            else ""
        ),
        "",
    ]
    if not comparisons:
        parts += ["No comparison has a pair yet.", ""]
    else:
        parts += [
            "| comparison | metric | pairs (machines) | row | reference | mean difference | interval | + / − / = "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            machines = ", ".join(f"{labels[m]} {n}" for m, n in c["machines"].items())
            value = np.mean([p["value"] for p in c["pairs"]])
            reference = np.mean([p["reference"] for p in c["pairs"]])
            row = _row_label(c["variant"], c["variation"], c["labeled_fraction"], c["unlabeled_fraction"])
            against = _row_label(
                c["reference"],
                c["reference_variation"],
                c["reference_labeled_fraction"],
                c["reference_unlabeled_fraction"],
            )
            parts.append(
                f"| {row} vs {against} | {c['metric_label']} "
                f"| {c['n']} ({machines}) | {value:.3f} | {reference:.3f} | {c['mean']:+.3f} "
                f"| {_interval_text(c['low'], c['high'])} | {c['positive']} / {c['negative']} / {c['zero']} "
                f"| {c['verdict']} |"
            )
        parts.append("")
    if efficiency:
        parts += [
            "### Data efficiency (Fig. 19): the labels a row needs to match Mask R-CNN trained on all of them",
            "",
            "Linear interpolation of the row's mean over the labeled fractions to Mask R-CNN's mean at 100 %, "
            "on (machine, seed) units holding every point; factor = 1 / fraction. Interval: percentile "
            f"bootstrap over the units ({100 * confidence:g} %, fixed seed); ≤ the smallest fraction and > 100 % "
            "are where the measured curve does not bracket the target.",
            "",
            "| row | metric | units (machines) | curve | Mask R-CNN at 100 % | fraction | factor | interval of the "
            "fraction | resamples ≤ smallest / > 100 % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in efficiency:
            points = ", ".join(f"{100 * f:g} %: {v:.3f}" for f, v in zip(e["fractions"], e["curve"], strict=True))
            factor = "—" if math.isnan(e["factor"]) else f"{'≥ ' if e['bound'] == 'at_most' else ''}{e['factor']:.2f}"
            machines = ", ".join(labels[m] for m in e["machines"])
            parts.append(
                f"| {_row_label(e['variant'], e['variation'])} | {e['metric_label']} "
                f"| {e['units']} ({machines}) | {points} "
                f"| {e['target']:.3f} | {_fraction_text(e['fraction'], e['bound'])} | {factor} "
                f"| {_fraction_text(e['low'])} – {_fraction_text(e['high'])} "
                f"| {100 * e['at_most_share']:.0f} % / {100 * e['beyond_share']:.0f} % |"
            )
        parts.append("")
    return parts


def _machine_sections(
    results: Sequence[Mapping[str, Any]], profile: Profile, output_dir: Path, suffix: str, level: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """The tables and plots of one machine's runs (mean ± sd over its seeds); returns the Markdown and rows."""
    rows = aggregate(results)
    table4 = [r for v in VARIANTS if (r := _find(rows, v, 1.0, 1.0)) is not None]
    labeled = {
        _row_label(v, k): [r for f in profile.labeled_fractions if (r := _find(rows, v, f, 1.0, k)) is not None]
        for v, k in _swept_rows(results, "labeled_fraction", ("fpn", *EFFICIENCY_VARIANTS))
    }
    by_unlabeled = {
        _row_label(v, k): [r for f in profile.unlabeled_fractions if (r := _find(rows, v, 1.0, f, k)) is not None]
        for v, k in _swept_rows(results, "unlabeled_fraction", ("malignet", *MEAN_TEACHER_VARIANTS))
    }
    by_unlabeled = {name: series for name, series in by_unlabeled.items() if series}
    unlabeled = [r for series in by_unlabeled.values() for r in series]
    why = _why_rows(results) if any(r["run"].get("variation") for r in results) else []
    if why:
        _plot_why(why, output_dir / f"why{suffix}.png")
    if any(len(v) > 1 for v in labeled.values()):
        _plot_sweep(
            labeled,
            "labeled_views",
            "labeled training views",
            "Labeled-data sweep (thesis Fig. 19)",
            output_dir / f"labeled_sweep{suffix}.png",
        )
    if any(len(series) > 1 for series in by_unlabeled.values()):
        _plot_sweep(
            by_unlabeled,
            "unlabeled_views",
            "unlabeled training views",
            "Unlabeled-data sweep (thesis Fig. 20)",
            output_dir / f"unlabeled_sweep{suffix}.png",
            reference=_find(rows, "fpn", 1.0, 0.0),
        )
    _plot_threshold_curves(results, output_dir / f"threshold_curves{suffix}.png")
    parts: list[str] = []
    if table4:
        parts += [f"{level} Table 4 ablation", "", _table(table4, "row", lambda r: r["row"]), ""]
        parts += [
            f"{level} Table 4 under both matching rules",
            "",
            "Class-agnostic: a prediction takes a lesion by mask IoU whatever its class, and the class is checked "
            "afterwards (the protocol's rule); per-class (COCO-style): only a prediction of the lesion's class "
            "can take it, so a higher-scored wrong-class duplicate no longer costs the right one. — : evaluated "
            "before both were recorded.",
            "",
            _table(table4, "row", lambda r: r["row"], MATCHING_METRICS, minutes=False),
            "",
        ]
        pixel = [r for r in table4 if not all(math.isnan(r[k]) for k in PIXEL_METRICS)]
        if pixel:
            parts += [
                f"{level} Pixel protocol (the related work's DSC, CPA and recall)",
                "",
                "Per-pixel over the test views, lesion pixels of any class and the malignant class against the "
                "rest; an instance model's masks are painted at its validation-chosen threshold.",
                "",
                _table(pixel, "row", lambda r: r["row"], PIXEL_METRICS, minutes=False),
                "",
            ]
    if any(labeled.values()):
        flat = [r for v in labeled.values() for r in v]
        parts += [
            f"{level} Labeled-data sweep (Fig. 19)",
            "",
            _table(flat, "row, labeled views", lambda r: f"{r['row']}, {r['labeled_views']}"),
            "",
        ]
    if unlabeled:
        parts += [
            f"{level} Unlabeled-data sweep (Fig. 20)",
            "",
            _table(unlabeled, "unlabeled views", lambda r: str(r["unlabeled_views"]))
            if len(by_unlabeled) == 1
            else _table(unlabeled, "row, unlabeled views", lambda r: f"{r['row']}, {r['unlabeled_views']}"),
            "",
        ]
    if why:
        table = _table(why, "row, change", lambda r: f"{r['row']}, {r['change']}")
        lines = table.split("\n")
        for key in PLOTTED_METRICS:
            lines[0] += f" Δ {REPORTED_METRICS[key]} (paired) |"
            lines[1] += "---|"
            for k, row in enumerate(why):
                delta = row[f"delta_{key}"]
                lines[k + 2] += " — |" if math.isnan(delta) else f" {delta:+.3f} |"
        parts += [f"{level} Why: one change at a time", "", "\n".join(lines), ""]
    return parts, rows


def write_report(
    results: Sequence[Mapping[str, Any]],
    profile: Profile,
    output_dir: Path,
    command: str,
    dataset_summary: Mapping[str, Any] | None = None,
    interval_method: str = "t",
    confidence: float = 0.95,
    seed: int = 0,
) -> str:
    """Write ``results.json``, ``results.md`` and the plots to ``output_dir``; returns the Markdown.

    The tables (mean ± sd over seeds) are per machine, since a machine changes the trained model as much as
    the seed; the evidence (paired differences with intervals, data efficiency) pools the machines' pairs
    and names the machines. With one machine the plots are ``labeled_sweep.png``, ``unlabeled_sweep.png``,
    ``why.png`` (when the why sweep ran) and ``threshold_curves.png``; with several, each name gets ``_m<k>``
    for machine M<k>.

    Args:
        results: benchmark results (any machines, one step budget).
        profile: the profile they were trained with.
        output_dir: where the report goes.
        command: the command line, quoted in the report.
        dataset_summary: the dataset's ``dataset.json`` (lesions drawn), when at hand.
        interval_method: ``"t"`` or ``"bootstrap"``
            (:func:`~malignet_bundle.experiments.study_statistics.mean_interval`).
        confidence: the intervals' level.
        seed: the bootstraps' random seed.

    Raises:
        ValueError: for an unknown interval method.
    """
    from malignet_bundle.atomic_io import write_text_atomic

    if interval_method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {list(INTERVAL_METHODS)}, got {interval_method!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    machines = sorted({machine_of(r) for r in results})
    labels = {m: f"M{k}" for k, m in enumerate(machines, 1)}
    seeds = sorted({r["run"]["seed"] for r in results})
    budgets = sorted({r["steps"] for r in results if "steps" in r})
    configs = sorted({", ".join(r["config_files"]) for r in results if "config_files" in r})
    parts = [
        f"## Semi-supervised benchmark, `{profile.name}` profile",
        "",
        f"Command: `{command}`",
        "",
        f"Profile: {profile.description}. Step budget: {profile.iterations} labeled-batch iterations per training "
        f"(rows that start from another's trained model: {profile.continuation_iterations} more)"
        + (f"; the results record {budgets}" if budgets and budgets != [profile.iterations] else "")
        + f". Seeds: {seeds}. Dataset: synthetic, {json.dumps(profile.dataset)} (studies; two views each).",
    ]
    if configs:
        parts.append(f"Bundle configs: {'; '.join(configs)} (then each run's overrides.json).")
    if dataset_summary:
        parts.append(f"Lesions drawn: {json.dumps(dataset_summary.get('lesions_drawn', {}))}.")
    parts.append(f"Trained on: {'; '.join(machines)}.")
    if len(machines) > 1:
        parts.append(
            f"These runs come from {len(machines)} machines, reported one by one below: the machine changes the "
            "trained model as much as the seed does, so rows are compared in pairs of one machine only."
        )
    parts += [
        "",
        "Mean ± sample sd over seeds, test split, IoU 0.5, detection confidence 0.7 (Table 11); AP50, FROC and "
        "the best-threshold mean F1 (the threshold picked on the test split itself) rank every detection ≥ 0.05.",
        "",
    ]
    rows_by_machine = {}
    for machine in machines:
        subset = [r for r in results if machine_of(r) == machine]
        several = len(machines) > 1
        if several:
            count = f"{len(subset)} run{'s' if len(subset) != 1 else ''}"
            parts += [f"### Machine {labels[machine]}: {machine} ({count})", ""]
        suffix = f"_m{labels[machine][1:]}" if several else ""
        sections, rows_by_machine[machine] = _machine_sections(
            subset, profile, output_dir, suffix, "####" if several else "###"
        )
        parts += sections
    comparisons = study_comparisons(results, interval_method, confidence, seed)
    efficiency = study_data_efficiency(results, profile, confidence, seed)
    parts += _evidence_sections(comparisons, efficiency, labels, interval_method, confidence)
    markdown = "\n".join(parts)
    write_json_atomic(
        {
            "profile": asdict(profile),
            "command": command,
            "machines": labels,
            "rows": [{**row, "trained_on": m} for m, rows in rows_by_machine.items() for row in rows],
            "comparisons": comparisons,
            "data_efficiency": efficiency,
            "interval_method": interval_method,
            "runs": list(results),
        },
        output_dir / "results.json",
    )
    write_text_atomic(markdown, output_dir / "results.md")
    return markdown


def with_overrides(profile: Profile, **changes: Any) -> Profile:
    """A copy of ``profile`` with some fields changed (e.g. seeds or iterations from the command line)."""
    return replace(profile, **changes)

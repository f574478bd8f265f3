"""Statistics of the semi-supervised evidence study: paired differences, intervals, data efficiency.

The benchmark's runs (``result.json`` of :mod:`~malignet_bundle.experiments.ssl_benchmark`) are compared in
pairs: two rows trained with the same seed (which also draws the same labeled and unlabeled patients), the
same step budget, the same recipe change and **on the same machine** (the same ``trained_on``). The machine
is part of the pair because the CPU's kernels change a trained model as much as the seed does
(docs/BENCHMARKS.md, Result 2): a run of one machine is never paired with a run of another. Pairs of several
machines may be pooled in one comparison; each pair stays within its machine, and the report names the
machines and how many pairs each gave.

For a comparison "A vs B" on a metric, each pair gives the difference A − B; the report gives their mean,
a 95 % interval of that mean and the sign count. The interval is either

- ``"t"``: Student's t interval of the mean (``scipy.stats.t``), which assumes roughly normal differences, or
- ``"bootstrap"``: the percentile bootstrap of the mean (``scipy.stats.bootstrap``, ``method="percentile"``)
  with a fixed random seed, so a report rebuilt from the same results is the same.

A difference is called **established** only when its interval excludes zero; with fewer than two pairs there
is no interval and nothing is established.

Data efficiency (thesis Fig. 19): the labeled fraction at which a semi-supervised row's mean metric reaches
the supervised reference's mean at 100 % of the labels, by linear interpolation between the measured
fractions, and its inverse, the data-efficiency factor; its uncertainty is a percentile bootstrap over
(machine, seed) units, each unit carrying its own curve and its own reference.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "INTERVAL_METHODS",
    "NOT_RECORDED",
    "Side",
    "PairedDifference",
    "ComparisonResult",
    "machine_of",
    "machine_slug",
    "paired_differences",
    "mean_interval",
    "compare",
    "crossing_fraction",
    "data_efficiency",
]

INTERVAL_METHODS = ("t", "bootstrap")
# the machine of a result written before ``trained_on`` was recorded: a machine of its own, paired with no other
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a benchmark row at given data fractions and recipe change.

    Attributes:
        variant: the benchmark variant (``fpn``, ``malignet``, …).
        labeled_fraction: fraction of the labeled patients.
        unlabeled_fraction: fraction of the unlabeled patients (0.0 for a row that reads none).
        variation: the ``why`` sweep's change, ``""`` for the unchanged recipe.
    """

    variant: str
    labeled_fraction: float = 1.0
    unlabeled_fraction: float = 1.0
    variation: str = ""

    def selects(self, run: Mapping[str, Any]) -> bool:
        """Whether ``run`` (a result's ``run`` entry) is a run of this side."""
        return (
            run["variant"] == self.variant
            and run["labeled_fraction"] == self.labeled_fraction
            and run["unlabeled_fraction"] == self.unlabeled_fraction
            and run.get("variation", "") == self.variation
        )


@dataclass(frozen=True)
class PairedDifference:
    """One pair: the two runs of one seed on one machine, and ``value − reference``."""

    machine: str
    seed: int
    value: float
    reference: float

    @property
    def difference(self) -> float:
        """``value − reference``."""
        return self.value - self.reference


@dataclass
class ComparisonResult:
    """A comparison over its pairs.

    Attributes:
        name: what is compared, as the report says it.
        metric: the result metric (e.g. ``test_ap50``).
        pairs: the paired differences.
        method: the interval's method (:data:`INTERVAL_METHODS`).
        confidence: the interval's level.
        mean: mean difference (nan without pairs).
        low: lower end of the interval (nan with fewer than two pairs).
        high: upper end of the interval.
        machines: pairs per machine (``trained_on``).
    """

    name: str
    metric: str
    pairs: list[PairedDifference]
    method: str
    confidence: float
    mean: float
    low: float
    high: float
    machines: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    @property
    def signs(self) -> tuple[int, int, int]:
        """(pairs with a positive difference, negative, zero)."""
        d = [p.difference for p in self.pairs]
        return sum(x > 0 for x in d), sum(x < 0 for x in d), sum(x == 0 for x in d)

    @property
    def established(self) -> bool:
        """True when the interval excludes zero."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        """``"established: higher"``, ``"established: lower"`` or ``"not established"``."""
        if not self.established:
            return "not established"
        return "established: higher" if self.low > 0 else "established: lower"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary with every pair."""
        positive, negative, zero = self.signs
        return {
            "name": self.name,
            "metric": self.metric,
            "n": self.n,
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "confidence": self.confidence,
            "positive": positive,
            "negative": negative,
            "zero": zero,
            "verdict": self.verdict,
            "machines": dict(self.machines),
            "pairs": [
                {"machine": p.machine, "seed": p.seed, "value": p.value, "reference": p.reference} for p in self.pairs
            ],
        }


def machine_of(result: Mapping[str, Any]) -> str:
    """The machine a result was trained on (:data:`NOT_RECORDED` when it does not say)."""
    return str(result.get("trained_on") or NOT_RECORDED)


def machine_slug(description: str) -> str:
    """A folder name for a machine description: readable, and distinct for distinct descriptions.

    Args:
        description: ``trained_on`` of a result (processor, kernels, cores, torch, GPU).

    Returns:
        Lowercase letters, digits and dashes (at most 60 of them) and 8 hex digits of the description's SHA-1,
        e.g. ``amd-epyc-9b14-avx512-kernels-2-cores-torch-2-14-1-1a2b3c4d``.
    """
    readable = re.sub(r"[^a-z0-9]+", "-", description.lower()).strip("-")[:60].strip("-") or "machine"
    return f"{readable}-{hashlib.sha1(description.encode('utf-8')).hexdigest()[:8]}"


def _key(result: Mapping[str, Any]) -> tuple:
    """What two paired runs share besides the row: machine, profile, step budget and seed."""
    return (machine_of(result), result.get("profile"), result.get("steps"), int(result["run"]["seed"]))


def _metric(result: Mapping[str, Any], metric: str | Sequence[str]) -> float:
    """The first of ``metric``'s names present in the result's metrics (nan when none is)."""
    names = [metric] if isinstance(metric, str) else list(metric)
    for name in names:
        if name in result.get("metrics", {}):
            return float(result["metrics"][name])
    return float("nan")


def paired_differences(
    results: Iterable[Mapping[str, Any]], side: Side, reference: Side, metric: str | Sequence[str]
) -> list[PairedDifference]:
    """The pairs of ``side`` and ``reference``: same machine, profile, step budget and seed.

    Args:
        results: benchmark results (``result.json`` contents), of any machines.
        side: the row compared.
        reference: the row it is compared with.
        metric: the metric's name, or names to try in order (a newer name first, the older one it replaces).

    Returns:
        One pair per (machine, profile, steps, seed) holding both rows with a finite metric, sorted by machine
        and seed.

    Raises:
        ValueError: when one side has two results for the same key (the same run counted twice).
    """
    found: dict[str, dict[tuple, float]] = {"side": {}, "reference": {}}
    for result in results:
        for name, chosen in (("side", side), ("reference", reference)):
            if chosen.selects(result["run"]):
                key = _key(result)
                if key in found[name]:
                    raise ValueError(f"two results of {chosen} for machine, profile, steps, seed {key}")
                found[name][key] = _metric(result, metric)
    pairs = [
        PairedDifference(key[0], key[3], value, found["reference"][key])
        for key, value in found["side"].items()
        if key in found["reference"] and math.isfinite(value) and math.isfinite(found["reference"][key])
    ]
    return sorted(pairs, key=lambda p: (p.machine, p.seed))


def mean_interval(
    differences: Sequence[float],
    method: str = "t",
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = 10_000,
) -> tuple[float, float]:
    """A ``confidence`` interval of the mean of ``differences``.

    Args:
        differences: paired differences.
        method: ``"t"`` (Student's t) or ``"bootstrap"`` (percentile bootstrap of the mean).
        confidence: the interval's level.
        seed: the bootstrap's random seed (the same seed gives the same interval).
        resamples: bootstrap resamples.

    Returns:
        (low, high); (nan, nan) with fewer than two differences; (mean, mean) when they are all equal.

    Raises:
        ValueError: for an unknown method or a level outside (0, 1).
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {list(INTERVAL_METHODS)}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return float("nan"), float("nan")
    mean = float(d.mean())
    if np.all(d == d[0]):  # no spread: both methods degenerate to the point
        return mean, mean
    if method == "t":
        low, high = stats.t.interval(confidence, len(d) - 1, loc=mean, scale=stats.sem(d))
    else:
        found = stats.bootstrap(
            (d,),
            np.mean,
            confidence_level=confidence,
            n_resamples=resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = found.confidence_interval
    return float(low), float(high)


def compare(
    results: Iterable[Mapping[str, Any]],
    name: str,
    side: Side,
    reference: Side,
    metric: str | Sequence[str],
    method: str = "t",
    confidence: float = 0.95,
    seed: int = 0,
) -> ComparisonResult:
    """Pair ``side`` with ``reference`` (:func:`paired_differences`) and summarise the differences.

    Args:
        results: benchmark results of any machines.
        name: the comparison's name in the report.
        side: the row compared.
        reference: the row it is compared with.
        metric: the metric's name, or names to try in order.
        method: the interval's method (:data:`INTERVAL_METHODS`).
        confidence: the interval's level.
        seed: the bootstrap's random seed.

    Returns:
        The :class:`ComparisonResult`, with the pairs per machine.
    """
    pairs = paired_differences(results, side, reference, metric)
    differences = [p.difference for p in pairs]
    low, high = mean_interval(differences, method, confidence, seed)
    machines: dict[str, int] = {}
    for p in pairs:
        machines[p.machine] = machines.get(p.machine, 0) + 1
    mean = float(np.mean(differences)) if differences else float("nan")
    metric_name = metric if isinstance(metric, str) else metric[0]
    return ComparisonResult(name, metric_name, pairs, method, confidence, mean, low, high, machines)


def crossing_fraction(fractions: Sequence[float], values: Sequence[float], target: float) -> tuple[float, str]:
    """The smallest fraction at which the piecewise-linear curve ``values(fractions)`` reaches ``target``.

    Args:
        fractions: ascending labeled fractions.
        values: the metric at each fraction.
        target: the level to reach.

    Returns:
        (fraction, bound): bound ``""`` for an interpolated crossing; ``"at_most"`` when the first point
        already reaches the target (the crossing is at or below the smallest fraction, which is returned);
        ``"beyond"`` when no point reaches it (fraction ``inf``).

    Raises:
        ValueError: for unequal lengths, no points, or fractions that do not ascend.
    """
    x, y = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{len(x)} fractions for {len(y)} values")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"fractions must ascend, got {list(x)}")
    if y[0] >= target:
        return float(x[0]), "at_most"
    for i in range(1, len(x)):
        if y[i] >= target:
            share = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + share * (x[i] - x[i - 1])), ""
    return float("inf"), "beyond"


def data_efficiency(
    results: Iterable[Mapping[str, Any]],
    curve: Sequence[Side],
    reference: Side,
    metric: str | Sequence[str],
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = 2000,
) -> dict[str, Any]:
    """The labeled fraction at which a row matches the reference row (thesis Fig. 19), with a bootstrap interval.

    Args:
        results: benchmark results of any machines.
        curve: the row at each labeled fraction, ascending (e.g. MaligNet at 25, 50 and 100 %).
        reference: the row to match (e.g. Mask R-CNN at 100 %).
        metric: the metric's name, or names to try in order.
        confidence: the interval's level.
        seed: the bootstrap's random seed.
        resamples: bootstrap resamples of the (machine, seed) units.

    Returns:
        ``units`` (machine, seed pairs with every point), ``fractions``, ``curve`` (mean per fraction),
        ``target`` (the reference's mean), ``fraction`` and ``bound`` (:func:`crossing_fraction`), ``factor``
        (1 / fraction: how many times fewer labels the row needs; 0 when it never matches), ``low`` / ``high``
        (the interval of the fraction; ``inf`` where resamples never match), ``factor_low`` / ``factor_high``,
        and ``at_most_share`` / ``beyond_share`` (resamples whose crossing lies at or below the smallest
        fraction, or beyond 100 %). Without any complete unit, ``units`` is 0 and the figures are nan.
    """
    results = list(results)
    fractions = [s.labeled_fraction for s in curve]
    values: dict[tuple, list[float]] = {}
    targets: dict[tuple, float] = {}
    for k, side in enumerate(curve):
        for pair in paired_differences(results, side, reference, metric):
            unit = (pair.machine, pair.seed)
            values.setdefault(unit, [float("nan")] * len(curve))[k] = pair.value
            targets[unit] = pair.reference
    units = sorted(u for u, v in values.items() if all(math.isfinite(x) for x in v))
    found: dict[str, Any] = {"units": len(units), "fractions": fractions, "resamples": resamples}
    found["machines"] = sorted({u[0] for u in units})
    if not units:
        nan = float("nan")
        empty = dict.fromkeys(("target", "fraction", "factor", "low", "high", "factor_low", "factor_high"), nan)
        return {**found, **empty, "curve": [], "bound": "", "confidence": confidence}
    table = np.array([values[u] for u in units])
    target = np.array([targets[u] for u in units])
    fraction, bound = crossing_fraction(fractions, table.mean(0), float(target.mean()))
    rng = np.random.default_rng(seed)
    draws, bounds = [], []
    for _ in range(resamples):
        pick = rng.integers(0, len(units), len(units))
        f, b = crossing_fraction(fractions, table[pick].mean(0), float(target[pick].mean()))
        draws.append(f)
        bounds.append(b)
    alpha = (1 - confidence) / 2
    low = float(np.quantile(draws, alpha, method="lower"))
    high = float(np.quantile(draws, 1 - alpha, method="higher"))

    def factor(f: float) -> float:
        return 0.0 if math.isinf(f) else 1.0 / f

    return {
        **found,
        "curve": [float(v) for v in table.mean(0)],
        "target": float(target.mean()),
        "fraction": fraction,
        "bound": bound,
        "factor": factor(fraction),
        "low": low,
        "high": high,
        "factor_low": factor(high),
        "factor_high": factor(low),
        "confidence": confidence,
        "at_most_share": bounds.count("at_most") / resamples,
        "beyond_share": bounds.count("beyond") / resamples,
    }

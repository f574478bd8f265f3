"""Realism report: how much synthetic whole-body bone scans look like real ones, in numbers and pictures.

Per view (counts as the bundle reads them: :func:`~malignet_bundle.data.nm_dicom.read_nm_views`, negative
vendor-processing values clipped to 0), the report measures:

- ``total_counts``: sum of the view;
- ``body_median``: median counts inside the body;
- ``p95_over_median``: 95th percentile over median inside the body (skeleton and hot spots against soft
  tissue);
- ``outside_mean`` and ``outside_zero_share``: mean counts and share of zero pixels outside the body,
  farther than ``OUTSIDE_MARGIN_PX`` (5 pixels, 11 mm) from it (scatter and room background, not the
  body's blurred edge);
- ``max_counts``: the brightest pixel (bladder, injection site, hot lesion);
- ``pelvis_width_px``: body width at the pelvis, arms included: the median over the rows 46–54 % down the
  body's vertical extent of the number of body pixels in the row (a gap between an arm and the hip does
  not count);
- ``spectrum_falloff``: the frequency (cycles/mm) where the radial power spectrum first falls below
  ``SPECTRUM_FRACTION`` (1 %) of its low-frequency level (the mean of its first three non-zero bins): the
  lower it is, the blurrier the view. It depends on the body's shape too, so it compares datasets of
  whole-body views, not single structures.

**Body mask rule** (:func:`body_mask`): the view smoothed by a Gaussian of sigma 3 pixels (≈7 mm; single
counts of the background and Poisson noise do not pass), thresholded at ``BODY_FRACTION`` (20 %) of the
median of the smoothed pixels above the smoothed view's mean (a first, rough body); holes filled.

The comparison is against a folder of real DICOM scans, or, without one, the built-in reference
:data:`REAL_REFERENCE`: the range of each statistic over real GE whole-body bone scans (1024×256, 2.26 mm).
A dataset meets the reference on a statistic when its median over views lies inside the reference range
or within ``tolerance`` (30 %) of its nearer end.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from malignet_bundle.atomic_io import save_figure_atomic, write_json_atomic, write_text_atomic
from malignet_bundle.data.nm_dicom import DicomInputError, read_nm_views

__all__ = [
    "BODY_FRACTION",
    "REAL_REFERENCE",
    "SPECTRUM_FRACTION",
    "STATISTICS",
    "ViewImage",
    "body_mask",
    "load_views",
    "pelvis_width_px",
    "radial_power_spectrum",
    "realism_report",
    "spectrum_falloff",
    "summarize",
    "view_statistics",
]

logger = logging.getLogger(__name__)

BODY_SIGMA_PX = 3.0
BODY_FRACTION = 0.2
SPECTRUM_FRACTION = 0.01
OUTSIDE_MARGIN_PX = 5
PELVIS_BAND = (0.46, 0.54)

# name → what it measures (the order of the report's table)
STATISTICS = {
    "total_counts": "total counts",
    "body_median": "median counts inside the body",
    "p95_over_median": "p95 / median inside the body",
    "outside_mean": "mean counts outside the body",
    "outside_zero_share": "share of zero pixels outside the body",
    "max_counts": "brightest pixel",
    "pelvis_width_px": "pelvis width (pixels)",
    "spectrum_falloff": "spectrum fall-off to 1 % (cycles/mm)",
}

# Real GE "Whole Body Bone" scans (1024×256, 2.26 mm pixels), one view each. The spectrum fall-off is that of
# a real anterior view, measured on its display picture (8-bit, grey scale inverted, 2× nearest-neighbour
# enlarged, reduced back to 1024×256); it is a single view, so its range is one number.
REAL_REFERENCE: dict[str, tuple[float, float]] = {
    "total_counts": (3.60e6, 3.63e6),
    "body_median": (26.0, 27.0),
    "p95_over_median": (2.6, 2.8),
    "outside_mean": (0.13, 0.34),
    "outside_zero_share": (0.89, 0.89),
    "max_counts": (245.0, 278.0),
    "pelvis_width_px": (201.0, 210.0),
    "spectrum_falloff": (0.0115, 0.0115),
}


@dataclass
class ViewImage:
    """One whole-body view and where it came from.

    Attributes:
        image: counts (rows, cols), float.
        spacing_mm: pixel size along the columns (the spectrum's frequency unit).
        source: file name and view, for the report.
    """

    image: np.ndarray
    spacing_mm: float
    source: str


@dataclass
class DatasetSummary:
    """Statistics of one dataset's views.

    Attributes:
        name: label of the dataset in the report.
        per_view: statistics of every view.
        spectrum: (frequencies, median normalised radial power spectrum over the views).
        histogram: (bin edges, density) of counts / body median inside the body, pooled over the views.
        examples: a few views for the side-by-side picture.
    """

    name: str
    per_view: list[dict[str, float]]
    spectrum: tuple[np.ndarray, np.ndarray]
    histogram: tuple[np.ndarray, np.ndarray]
    examples: list[ViewImage] = field(default_factory=list)


def body_mask(image: np.ndarray, sigma_px: float = BODY_SIGMA_PX, fraction: float = BODY_FRACTION) -> np.ndarray:
    """The body in a whole-body view, by the rule of the module docstring.

    Args:
        image: counts (rows, cols).
        sigma_px: Gaussian smoothing before thresholding, pixels.
        fraction: threshold as a fraction of the rough body's median smoothed counts.

    Returns:
        Boolean mask, True inside the body.

    Raises:
        ValueError: when the view holds no counts (nothing to call a body).
    """
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma_px)
    rough = smooth > smooth.mean()
    if not rough.any():
        raise ValueError("the view holds no counts: no body to find")
    mask = smooth > fraction * float(np.median(smooth[rough]))
    return ndimage.binary_fill_holes(mask)


def pelvis_width_px(mask: np.ndarray, band: tuple[float, float] = PELVIS_BAND) -> float:
    """Body width at the pelvis: median over the rows ``band`` of the way down the body of its body pixels.

    Args:
        mask: body mask (rows, cols).
        band: fractions of the body's vertical extent (vertex 0, lowest body row 1) that hold the pelvis.

    Returns:
        Width in pixels; 0 for an empty mask.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size == 0:
        return 0.0
    top, bottom = rows[0], rows[-1]
    r0 = int(round(top + band[0] * (bottom - top)))
    r1 = max(int(round(top + band[1] * (bottom - top))), r0 + 1)
    return float(np.median(mask[r0:r1].sum(axis=1)))


def radial_power_spectrum(image: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a view (mean removed), in bins of one cycle per image width.

    Args:
        image: counts (rows, cols).
        spacing_mm: pixel size (square pixels).

    Returns:
        (frequencies in cycles/mm, mean power in each ring); bin 0 is the (removed) mean.
    """
    data = np.asarray(image, dtype=np.float64)
    power = np.abs(np.fft.fft2(data - data.mean())) ** 2
    f_rows = np.fft.fftfreq(data.shape[0], spacing_mm)
    f_cols = np.fft.fftfreq(data.shape[1], spacing_mm)
    radius = np.hypot(f_rows[:, None], f_cols[None, :])
    step = 1.0 / (min(data.shape) * spacing_mm)
    ring = np.rint(radius / step).astype(int).ravel()
    total = np.bincount(ring, power.ravel())
    count = np.bincount(ring)
    nyquist_ring = int(np.floor(0.5 / spacing_mm / step))  # rings beyond it are the corners only
    mean = total[: nyquist_ring + 1] / np.maximum(count[: nyquist_ring + 1], 1)
    return np.arange(nyquist_ring + 1) * step, mean


def spectrum_falloff(
    frequencies: np.ndarray, power: np.ndarray, fraction: float = SPECTRUM_FRACTION, low_bins: int = 3
) -> float:
    """The first frequency where ``power`` falls below ``fraction`` of its low-frequency level.

    Args:
        frequencies: ring frequencies (cycles/mm), bin 0 the mean.
        power: ring powers.
        fraction: level, relative to the mean power of bins 1…``low_bins``.
        low_bins: how many of the lowest non-zero rings make the low-frequency level.

    Returns:
        The frequency in cycles/mm, interpolated (log power against frequency) between the last ring above
        the level and the first below it; the highest frequency when the spectrum never falls that far.

    Raises:
        ValueError: when the spectrum has too few rings or no power at low frequencies.
    """
    if len(power) <= low_bins + 1:
        raise ValueError(f"a spectrum of {len(power)} rings is too short")
    level = float(np.mean(power[1 : low_bins + 1]))
    if level <= 0:
        raise ValueError("no power at low frequencies: a constant view")
    target = fraction * level
    below = np.nonzero(power[low_bins + 1 :] < target)[0]
    if not below.size:
        return float(frequencies[-1])
    k = low_bins + 1 + int(below[0])
    above, under = float(power[k - 1]), max(float(power[k]), 1e-300)
    # the ring before k is at or above the level; interpolate where the log power crosses it
    t = (np.log(above) - np.log(target)) / max(np.log(above) - np.log(under), 1e-12)
    return float(frequencies[k - 1] + np.clip(t, 0.0, 1.0) * (frequencies[k] - frequencies[k - 1]))


def view_statistics(image: np.ndarray, spacing_mm: float) -> dict[str, float]:
    """Every statistic of :data:`STATISTICS` for one view.

    Args:
        image: counts (rows, cols).
        spacing_mm: pixel size.

    Returns:
        name → value.

    Raises:
        ValueError: when the view holds no counts.
    """
    image = np.asarray(image, dtype=np.float64)
    body = body_mask(image)
    inside = image[body]
    outside = image[~ndimage.binary_dilation(body, iterations=OUTSIDE_MARGIN_PX)]
    median = float(np.median(inside))
    frequencies, power = radial_power_spectrum(image, spacing_mm)
    return {
        "total_counts": float(image.sum()),
        "body_median": median,
        "p95_over_median": float(np.percentile(inside, 95) / median) if median > 0 else float("nan"),
        "outside_mean": float(outside.mean()) if outside.size else float("nan"),
        "outside_zero_share": float((outside == 0).mean()) if outside.size else float("nan"),
        "max_counts": float(image.max()),
        "pelvis_width_px": pelvis_width_px(body),
        "spectrum_falloff": spectrum_falloff(frequencies, power),
    }


def _dicom_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` that starts like a DICOM file (preamble + "DICM"), sorted."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                files.append(path)
    return files


def load_views(
    folder: str | os.PathLike, views: Sequence[str] = ("anterior",), limit: int | None = None
) -> list[ViewImage]:
    """Read the whole-body views of every DICOM file under ``folder`` (a dataset's ``studies/`` or any tree).

    Args:
        folder: a folder of DICOM NM files (searched recursively; files are recognised by their "DICM" mark).
        views: which views to keep ("anterior", "posterior").
        limit: at most this many views (in file order).

    Returns:
        The views.

    Raises:
        ValueError: when ``folder`` is not a folder or holds no such view; a file that is not a readable
            whole-body NM file, with the file and the reason.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    found: list[ViewImage] = []
    for path in _dicom_files(root):
        try:
            nm = read_nm_views(path)
        except DicomInputError as e:
            raise ValueError(f"cannot measure {path}: {e.reason}") from e
        for view in views:
            if view in nm.views:
                found.append(ViewImage(nm.frame(view).astype(np.float64), float(nm.spacing[1]), f"{path.name} {view}"))
                if limit is not None and len(found) >= limit:
                    return found
    if not found:
        raise ValueError(f"{root}: no DICOM whole-body view among {list(views)} in this folder")
    return found


def summarize(name: str, images: Iterable[ViewImage], examples: int = 3) -> DatasetSummary:
    """Measure every view of one dataset.

    Args:
        name: the dataset's label in the report.
        images: its views.
        examples: how many views to keep for the side-by-side picture.

    Returns:
        The statistics of every view, the median normalised spectrum and the pooled intensity histogram.

    Raises:
        ValueError: when ``images`` is empty.
    """
    per_view, spectra, kept = [], [], []
    edges = np.linspace(0.0, 12.0, 121)
    histogram = np.zeros(len(edges) - 1)
    frequencies = None
    for item in images:
        stats = view_statistics(item.image, item.spacing_mm)
        per_view.append(stats)
        frequencies, power = radial_power_spectrum(item.image, item.spacing_mm)
        spectra.append(power / np.mean(power[1:4]))
        body = body_mask(item.image)
        if stats["body_median"] > 0:
            histogram += np.histogram(item.image[body] / stats["body_median"], bins=edges)[0]
        if len(kept) < examples:
            kept.append(item)
    if not per_view:
        raise ValueError(f"{name}: no views to measure")
    length = min(len(s) for s in spectra)
    spectrum = np.median(np.stack([s[:length] for s in spectra]), axis=0)
    density = histogram / max(histogram.sum() * np.diff(edges)[0], 1e-12)
    return DatasetSummary(name, per_view, (frequencies[:length], spectrum), (edges, density), kept)


def _gap(value: float, low: float, high: float) -> float:
    """Relative distance of ``value`` from [low, high]: 0 inside, else to the nearer end over that end."""
    if low <= value <= high:
        return 0.0
    end = low if value < low else high
    return abs(value - end) / abs(end) if end else float("inf")


def compare(
    summaries: Sequence[DatasetSummary], reference: dict[str, tuple[float, float]], tolerance: float = 0.3
) -> dict:
    """Each dataset's median, min and max per statistic, and its gap to the reference range.

    Args:
        summaries: the synthetic datasets.
        reference: statistic → (low, high) of the real scans.
        tolerance: largest relative gap that still meets the reference.

    Returns:
        ``{dataset: {statistic: {median, min, max, gap, meets}}}``.
    """
    table = {}
    for summary in summaries:
        rows = {}
        for name in STATISTICS:
            values = np.array([v[name] for v in summary.per_view], dtype=float)
            median = float(np.nanmedian(values))
            row = {"median": median, "min": float(np.nanmin(values)), "max": float(np.nanmax(values))}
            if name in reference:
                row["gap"] = _gap(median, *reference[name])
                row["meets"] = bool(row["gap"] <= tolerance)
            rows[name] = row
        table[summary.name] = rows
    return table


def _fmt(name: str, value: float) -> str:
    if name == "total_counts":
        return f"{value / 1e6:.2f} M"
    if name == "outside_zero_share":
        return f"{100 * value:.1f} %"
    if name == "spectrum_falloff":
        return f"{value:.4f}"
    if name in ("outside_mean", "p95_over_median"):
        return f"{value:.3g}" if name == "outside_mean" else f"{value:.2f}"
    return f"{value:.0f}"


def markdown_table(table: dict, reference: dict[str, tuple[float, float]], reference_name: str) -> str:
    """The comparison as a Markdown table: one row per statistic, reference first, each dataset after.

    Args:
        table: what :func:`compare` returns.
        reference: statistic → (low, high).
        reference_name: column title of the reference.

    Returns:
        The Markdown text.
    """
    names = list(table)
    lines = [
        "| statistic (per view) | " + " | ".join([reference_name, *[f"{n}, median [min, max]" for n in names]]) + " |",
        "| --- | " + " | ".join(["---"] * (len(names) + 1)) + " |",
    ]
    for stat, title in STATISTICS.items():
        low, high = reference.get(stat, (float("nan"), float("nan")))
        ref = _fmt(stat, low) if low == high else f"{_fmt(stat, low)} – {_fmt(stat, high)}"
        cells = []
        for n in names:
            row = table[n][stat]
            mark = "" if "meets" not in row else (" ✓" if row["meets"] else " ✗")
            cells.append(f"{_fmt(stat, row['median'])} [{_fmt(stat, row['min'])}, {_fmt(stat, row['max'])}]{mark}")
        lines.append(f"| {title} | {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reference_from_views(summary: DatasetSummary) -> dict[str, tuple[float, float]]:
    """The range (min, max) of every statistic over a folder of real views."""
    return {
        name: (float(min(v[name] for v in summary.per_view)), float(max(v[name] for v in summary.per_view)))
        for name in STATISTICS
    }


def _display(image: np.ndarray) -> np.ndarray:
    """A view as readers see it: inverted grey, window from 0 to the body's 99.5th percentile."""
    body = body_mask(image)
    top = float(np.percentile(image[body], 99.5)) if body.any() else float(image.max())
    return 1.0 - np.clip(image / max(top, 1e-6), 0.0, 1.0)


def _figures(summaries: Sequence[DatasetSummary], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        edges, density = s.histogram
        ax.semilogy(0.5 * (edges[1:] + edges[:-1]), np.maximum(density, 1e-7), label=s.name)
    ax.set_xlabel("counts / median counts inside the body")
    ax.set_ylabel("density of body pixels")
    ax.set_title("intensity histogram inside the body")
    ax.legend()
    save_figure_atomic(fig, out_dir / "histogram.png", dpi=120, bbox_inches="tight")
    written.append("histogram.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        f, p = s.spectrum
        ax.loglog(f[1:], p[1:], label=s.name)
    ax.axhline(SPECTRUM_FRACTION, color="grey", linestyle=":", label=f"{SPECTRUM_FRACTION:g} of low-frequency level")
    ax.set_xlabel("spatial frequency (cycles/mm)")
    ax.set_ylabel("power / low-frequency level (median over views)")
    ax.set_title("radial power spectrum")
    ax.legend()
    save_figure_atomic(fig, out_dir / "spectrum.png", dpi=120, bbox_inches="tight")
    written.append("spectrum.png")

    panels = [(s.name, ex) for s in summaries for ex in s.examples]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 6.4), squeeze=False)
    for ax, (name, ex) in zip(axes[0], panels, strict=True):
        ax.imshow(_display(ex.image), cmap="gray", vmin=0, vmax=1, aspect="equal", interpolation="nearest")
        ax.set_title(f"{name}\n{ex.source}", fontsize=6)
        ax.axis("off")
    save_figure_atomic(fig, out_dir / "side_by_side.png", dpi=150, bbox_inches="tight")
    written.append("side_by_side.png")
    return written


def realism_report(
    synthetic: dict[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    real_dir: str | os.PathLike | None = None,
    views: Sequence[str] = ("anterior",),
    limit: int | None = None,
    tolerance: float = 0.3,
) -> dict:
    """Measure synthetic datasets against real scans (a folder of them, or :data:`REAL_REFERENCE`).

    Writes ``report.json`` (per-view statistics, the comparison table), ``report.md`` (the table),
    ``histogram.png``, ``spectrum.png`` and ``side_by_side.png`` to ``out_dir``, each atomically.

    Args:
        synthetic: dataset label → dataset folder (its DICOM files are found anywhere below it).
        out_dir: where the report goes.
        real_dir: a folder of real DICOM NM scans; ``None`` compares with the built-in reference.
        views: which views to measure.
        limit: at most this many views per dataset.
        tolerance: largest relative gap to the reference range that still meets it.

    Returns:
        The content of ``report.json``.

    Raises:
        ValueError: for a folder without readable whole-body views, naming the folder or the file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for name, folder in synthetic.items():
        summaries.append(summarize(name, load_views(folder, views, limit)))
        version = _generator_version(Path(folder))
        logger.info("%s: %d views of %s (generator version %s)", name, len(summaries[-1].per_view), folder, version)
    if real_dir is not None:
        real = summarize("real", load_views(real_dir, views, limit))
        reference, reference_name = _reference_from_views(real), f"real ({len(real.per_view)} views), range"
        shown = [real, *summaries]
    else:
        reference, reference_name, shown = dict(REAL_REFERENCE), "real GE scans (built-in), range", summaries
    table = compare(summaries, reference, tolerance)
    text = markdown_table(table, reference, reference_name)
    figures = _figures(shown, out)
    report = {
        "reference": {"source": str(real_dir) if real_dir is not None else "built-in", "ranges": reference},
        "tolerance": tolerance,
        "datasets": {
            s.name: {
                "folder": str(synthetic[s.name]),
                "generator_version": _generator_version(Path(synthetic[s.name])),
                "views": len(s.per_view),
                "per_view": s.per_view,
            }
            for s in summaries
        },
        "table": table,
        "figures": figures,
    }
    if real_dir is not None:
        report["real_per_view"] = real.per_view
    write_json_atomic(report, out / "report.json")
    write_text_atomic(text, out / "report.md")
    return report


def _generator_version(folder: Path) -> int | None:
    """The generator version a synthetic dataset records in its ``dataset.json``, if any."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("generator_version")
    except (json.JSONDecodeError, AttributeError):
        return None

"""Learning curves to the plateau: Mask R-CNN and MaligNet on a benchmark profile, evaluated every few hundred steps.

    python scripts/learning_curve.py --profile cpu --steps 3200 --every 320             # both, one after the other
    python scripts/learning_curve.py --profile cpu --variants malignet --threads 1 &    # or side by side, one core each
    python scripts/learning_curve.py --profile cpu --steps 6400                         # later: extend the same curves
    python scripts/learning_curve.py --profile cpu --report_only                        # figure and table again

Each point is the model at that step (not the best so far), with its operating threshold chosen on the
validation split and AP50 / mean F1 read on the test split. Interrupted curves resume; ``curve.json`` in
``<output_dir>/curves/<variant>-s<seed>/`` holds the points. The figure and a Markdown table with the plateau
(the first point within --tolerance of every later one) are written to ``<output_dir>``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from malignet_bundle.atomic_io import write_text_atomic
from malignet_bundle.experiments.learning_curve import CURVE_METRICS, plateau, plot_learning_curves, run_learning_curve
from malignet_bundle.experiments.ssl_benchmark import PROFILES, VARIANTS, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]


def _table(curves: list[dict], tolerance: float) -> str:
    lines = [
        "| model | points | last step | training minutes | metric | plateau from step | value there | best "
        "| still rising |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for curve in curves:
        points = curve["points"]
        if not points:
            continue
        steps = [p["step"] for p in points]
        for key, name in CURVE_METRICS.items():
            found = plateau(steps, [p[key] for p in points], tolerance)
            minutes = points[-1]["train_seconds"] / 60
            lines.append(
                f"| {VARIANTS[curve['variant']][0]} | {len(points)} | {steps[-1]} | {minutes:.1f} "
                f"| {name} | {found['step']} | {found['value']:.3f} | {found['best']:.3f} | "
                f"{'yes' if found['still_rising'] else 'no'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--variants", default="fpn,malignet", help="comma-separated benchmark variants")
    parser.add_argument("--steps", type=int, default=3200, help="train to this many iterations")
    parser.add_argument("--every", type=int, default=320, help="iterations between evaluated points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--overrides", default=None, help="JSON object of extra bundle overrides")
    parser.add_argument("--tolerance", type=float, default=0.02, help="gains below this count as flat")
    parser.add_argument("--dataset_dir", default=None, help="default: data/benchmark_ssl/<profile>, synthesised")
    parser.add_argument("--chest_detector", default=None, help="default: <dataset_dir>/chest_detector.pt, trained")
    parser.add_argument("--output_dir", default=None, help="default: runs/benchmark_ssl/<profile>")
    parser.add_argument("--report_only", action="store_true", help="figure and table from the finished points")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    dataset_dir = Path(args.dataset_dir or ROOT / "data" / "benchmark_ssl" / profile.name).resolve()
    chest_detector = Path(args.chest_detector or dataset_dir / "chest_detector.pt").resolve()
    output_dir = Path(args.output_dir or ROOT / "runs" / "benchmark_ssl" / profile.name).resolve()
    variants = args.variants.split(",")
    overrides = json.loads(args.overrides) if args.overrides else None
    if not args.report_only:
        prepare_dataset(profile, dataset_dir, chest_detector, ROOT / "configs" / "metadata.json")
        for variant in variants:
            run_learning_curve(
                variant, profile, dataset_dir, output_dir, chest_detector, args.steps, args.every, args.seed, overrides
            )
    curves = [
        json.loads(path.read_text())
        for variant in variants
        if (path := output_dir / "curves" / f"{variant}-s{args.seed}" / "curve.json").is_file()
    ]
    figure = output_dir / "learning_curves.png"
    plot_learning_curves(curves, figure, {v: VARIANTS[v][0] for v in VARIANTS})
    table = _table(curves, args.tolerance)
    write_text_atomic(table + "\n", output_dir / "learning_curves.md")
    print(table)
    print(f"\nfigure: {figure}; points: {output_dir / 'curves'}/*/curve.json")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()

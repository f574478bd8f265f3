"""Semi-supervised benchmark: thesis Table 4 ablation and Fig. 19/20 sweeps, trained and evaluated by the bundle.

    python scripts/benchmark_ssl.py --profile cpu                 # everything, ≈2 h on 2 cores, resumable
    python scripts/benchmark_ssl.py --profile cpu --seeds 0        # one seed now, the others later
    python scripts/benchmark_ssl.py --profile cpu --sweeps table4  # only the ablation rows
    python scripts/benchmark_ssl.py --profile cpu --sweeps why --seeds 0  # one recipe change at a time
    python scripts/benchmark_ssl.py --profile cpu --sweeps why --variations steps3x  # only the longer schedule
    python scripts/benchmark_ssl.py --profile cpu --reevaluate     # new evaluation, same trained models
    python scripts/benchmark_ssl.py --profile full --dataset_dir /data/bonescans --chest_detector models/chest.pt

Finished runs are skipped, interrupted ones resume; results.md, results.json and the sweep plots are
rewritten from every finished run after each run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from malignet_bundle.experiments.ssl_benchmark import (
    DEFAULT_SWEEPS,
    PROFILES,
    SWEEPS,
    VARIANTS,
    VARIATIONS,
    execute_run,
    plan_runs,
    prepare_dataset,
    with_overrides,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--dataset_dir", default=None, help="default: data/benchmark_ssl/<profile>, synthesised")
    parser.add_argument("--chest_detector", default=None, help="default: <dataset_dir>/chest_detector.pt, trained")
    parser.add_argument("--output_dir", default=None, help="default: runs/benchmark_ssl/<profile>")
    parser.add_argument("--sweeps", default=",".join(DEFAULT_SWEEPS), help=f"comma-separated among {','.join(SWEEPS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    parser.add_argument("--variants", default=None, help=f"comma-separated among {','.join(VARIANTS)}")
    parser.add_argument("--variations", default=None, help=f"why sweep: comma-separated among {','.join(VARIATIONS)}")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per run")
    parser.add_argument("--tracking", choices=["mlflow"], default=None, help="log every run to MLflow")
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from finished runs")
    parser.add_argument(
        "--reevaluate", action="store_true", help="evaluate finished runs again with their trained models"
    )
    args = parser.parse_args(argv)

    profile = PROFILES[args.profile]
    if args.iterations is not None:
        profile = with_overrides(profile, iterations=args.iterations)
    dataset_dir = Path(args.dataset_dir or ROOT / "data" / "benchmark_ssl" / profile.name).resolve()
    chest_detector = Path(args.chest_detector or dataset_dir / "chest_detector.pt").resolve()
    output_dir = Path(args.output_dir or ROOT / "runs" / "benchmark_ssl" / profile.name).resolve()
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    variants = None if args.variants is None else args.variants.split(",")
    variations = None if args.variations is None else args.variations.split(",")
    runs = plan_runs(profile, args.sweeps.split(","), seeds, variants, variations)
    command = shlex.join(["python", "scripts/benchmark_ssl.py", *(sys.argv[1:] if argv is None else argv)])

    if not args.report_only:
        prepare_dataset(profile, dataset_dir, chest_detector, ROOT / "configs" / "metadata.json")
    summary_path = dataset_dir / "dataset.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    results = []
    progress = tqdm(runs, desc=f"benchmark_ssl[{profile.name}]", unit="run", disable=args.report_only)
    for run in progress:
        progress.set_postfix_str(run.name)
        if args.report_only:
            path = output_dir / "runs" / run.name / "result.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
            continue
        results.append(
            execute_run(run, profile, dataset_dir, output_dir, chest_detector, args.tracking, args.reevaluate)
        )
        write_report(results, profile, output_dir, command, summary)
    print(write_report(results, profile, output_dir, command, summary))
    plots = ", ".join(p.name for p in sorted(output_dir.glob("*.png")))
    print(f"\nreport: {output_dir / 'results.md'}; plots in {output_dir}: {plots}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()

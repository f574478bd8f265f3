"""Semi-supervised benchmark and evidence study: thesis Table 4 ablation and Fig. 19/20 sweeps, through the bundle.

    python scripts/benchmark_ssl.py --profile cpu                 # the study: every row, 1600 steps, resumable
    python scripts/benchmark_ssl.py --profile cpu --seeds 0        # one seed now, the others later
    python scripts/benchmark_ssl.py --profile cpu --steps 200      # another budget (kept apart from 1600's)
    python scripts/benchmark_ssl.py --profile cpu --sweeps table4  # only the ablation rows
    python scripts/benchmark_ssl.py --profile cpu --sweeps why --seeds 0  # one recipe change at a time
    python scripts/benchmark_ssl.py --profile cpu --sweeps why --variations steps3x  # only the longer schedule
    python scripts/benchmark_ssl.py --profile cpu --sweeps labeled --variants fpn,malignet,fpn_mt \
        --variations mt_threshold0.9                               # Fig. 19 with the guarded mean teacher
    python scripts/benchmark_ssl.py --profile cpu --reevaluate     # new evaluation, same trained models
    python scripts/benchmark_ssl.py --profile cpu --report_only    # the report from the committed results
    python scripts/benchmark_ssl.py --profile cpu --sweeps table4 --variants fpn,malignet,unet,unet_mt,double_unet
                                                                   # the pixel-level baselines beside the detectors
    python scripts/benchmark_ssl.py --profile full --dataset_dir /data/bonescans --chest_detector models/chest.pt

The `cpu` profile trains with configs/cpu.json's speed settings for 1600 steps (the learning curves'
plateau). Finished runs are skipped, interrupted ones resume. Each finished run's result is also written to
<results_dir>/<machine slug>/<profile>/steps<N>/<run>.json (default docs/results/study, small JSON to commit):
a run kept there for this machine is not trained again, and --report_only rebuilds the report from those files
on a fresh clone. results.md, results.json and the plots are rewritten after each run from this session's and
the kept results of every machine; the report pairs runs of one machine only and names the machines it pools.
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
    RunSpec,
    execute_run,
    load_study_results,
    machine_description,
    merge_results,
    plan_runs,
    prepare_dataset,
    run_directory,
    with_steps,
    write_report,
)
from malignet_bundle.experiments.study_statistics import INTERVAL_METHODS
from malignet_bundle.metrics.lesion import MATCHING_RULES

ROOT = Path(__file__).resolve().parents[1]


def _planned(results: list[dict], runs: list[RunSpec], any_seed: bool) -> list[dict]:
    """The results of the planned runs; with ``any_seed``, of the planned rows whatever their seed.

    A fresh clone's report takes every seed any machine ran, unless --seeds names some.
    """
    names = {r.name for r in runs}
    rows = {(r.variant, r.labeled_fraction, r.unlabeled_fraction, r.variation) for r in runs}

    def wanted(result: dict) -> bool:
        run = result["run"]
        row = (run["variant"], run["labeled_fraction"], run["unlabeled_fraction"], run.get("variation", ""))
        return row in rows if any_seed else result["name"] in names

    return [r for r in results if wanted(r)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument(
        "--dataset_dir", default=None, help="default: data/benchmark_ssl/<profile>-v<generator version>, synthesised"
    )
    parser.add_argument("--chest_detector", default=None, help="default: <dataset_dir>/chest_detector.pt, trained")
    parser.add_argument("--output_dir", default=None, help="default: runs/benchmark_ssl/<profile>-v<generator version>")
    parser.add_argument(
        "--results_dir",
        default=None,
        help="where each run's result JSON is kept per machine (default: docs/results/study; smoke profile: "
        "<output_dir>/study); 'none' keeps none",
    )
    parser.add_argument("--sweeps", default=",".join(DEFAULT_SWEEPS), help=f"comma-separated among {','.join(SWEEPS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    parser.add_argument("--variants", default=None, help=f"comma-separated among {','.join(VARIANTS)}")
    parser.add_argument(
        "--variations",
        default=None,
        help=f"comma-separated among {','.join(VARIATIONS)}: the why sweep's changes (default all); the labeled "
        "and unlabeled sweeps train them in place of the unchanged recipe on the rows they apply to",
    )
    parser.add_argument(
        "--steps",
        "--iterations",
        dest="steps",
        type=int,
        default=None,
        help="training iterations per run (default: the profile's, cpu: 1600, the learning curves' plateau)",
    )
    parser.add_argument(
        "--matching",
        choices=MATCHING_RULES,
        default="class_agnostic",
        help="matching rule of the evaluation's headline names (Table 4 is recorded under both)",
    )
    parser.add_argument(
        "--interval", choices=INTERVAL_METHODS, default="t", help="interval of the paired differences' mean"
    )
    parser.add_argument("--tracking", choices=["mlflow"], default=None, help="log every run to MLflow")
    parser.add_argument(
        "--report_only", action="store_true", help="rewrite the report from finished runs and the kept results"
    )
    parser.add_argument(
        "--reevaluate", action="store_true", help="evaluate finished runs again with their trained models"
    )
    args = parser.parse_args(argv)

    profile = PROFILES[args.profile]
    if args.steps is not None:
        profile = with_steps(profile, args.steps)
    dataset_dir = Path(args.dataset_dir or ROOT / "data" / "benchmark_ssl" / profile.data_name).resolve()
    chest_detector = Path(args.chest_detector or dataset_dir / "chest_detector.pt").resolve()
    output_dir = Path(args.output_dir or ROOT / "runs" / "benchmark_ssl" / profile.data_name).resolve()
    if args.results_dir == "none":
        results_dir = None
    elif args.results_dir is not None:
        results_dir = Path(args.results_dir).resolve()
    else:  # the smoke profile's numbers mean nothing: never into the repository
        results_dir = output_dir / "study" if profile.name == "smoke" else ROOT / "docs" / "results" / "study"
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    variants = None if args.variants is None else args.variants.split(",")
    variations = None if args.variations is None else args.variations.split(",")
    runs = plan_runs(profile, args.sweeps.split(","), seeds, variants, variations)
    command = shlex.join(["python", "scripts/benchmark_ssl.py", *(sys.argv[1:] if argv is None else argv)])

    if not args.report_only:
        prepare_dataset(profile, dataset_dir, chest_detector, ROOT / "configs" / "metadata.json")
    summary_path = dataset_dir / "dataset.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    kept = _planned(load_study_results(results_dir, profile), runs, seeds is None) if results_dir else []
    # a teacher's model is needed again when its student has still to be trained on this machine
    students = [r for r in runs if r.teacher is not None]
    if students and not args.report_only:
        this_machine = machine_description()
        done = {k["name"] for k in kept if k.get("trained_on") == this_machine}
        done |= {s.name for s in students if (run_directory(output_dir, profile, s) / "result.json").is_file()}
        teachers_needed = {s.teacher for s in students if s.name not in done}
    else:
        teachers_needed = set()
    local = []
    progress = tqdm(runs, desc=f"benchmark_ssl[{profile.name}]", unit="run", disable=args.report_only)
    for run in progress:
        progress.set_postfix_str(run.name)
        if args.report_only:
            path = run_directory(output_dir, profile, run) / "result.json"
            if path.is_file():
                local.append(json.loads(path.read_text()))
            continue
        local.append(
            execute_run(
                run,
                profile,
                dataset_dir,
                output_dir,
                chest_detector,
                args.tracking,
                args.reevaluate,
                results_dir,
                args.matching,
                run in teachers_needed,
            )
        )
        write_report(merge_results(local, kept), profile, output_dir, command, summary, args.interval)
    print(write_report(merge_results(local, kept), profile, output_dir, command, summary, args.interval))
    plots = ", ".join(p.name for p in sorted(output_dir.glob("*.png")))
    print(f"\nreport: {output_dir / 'results.md'}; plots in {output_dir}: {plots}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()

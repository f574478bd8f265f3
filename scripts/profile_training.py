"""Profile one training step of Mask R-CNN and MaligNet with the CPU-sized network (benchmark ``cpu`` profile).

Makes a small synthetic dataset and a chest detector in ``--work_dir`` when missing, runs ``--steps`` steps
of each model through the bundle's trainer, prints the breakdown as a Markdown table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.experiments.training_profile import compare_settings, format_breakdown, profile_training


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", default="runs/profile_training")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--operators", type=int, default=15, help="top operators by torch.profiler (0: none)")
    parser.add_argument("--overrides", default=None, help="JSON object of extra bundle config overrides")
    parser.add_argument(
        "--compare",
        default=None,
        help="JSON {label: overrides}: throughput ratios of these settings, interleaved (first = reference), "
        'e.g. \'{"as is": {}, "bf16": {"bf16_on_cpu": true}}\'',
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: profiles per setting")
    parser.add_argument("--json", default=None, help="write the results here (default: <work_dir>/profile.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work_dir)
    data, detector = work / "data", work / "chest_detector.pt"
    if not (data / "datalist.json").is_file():
        from malignet_bundle.data.synthesize import write_dataset

        write_dataset(data, labeled=16, unlabeled=16, validation=1, test=0, seed=5, progress=True)
    if not detector.is_file():
        from malignet_bundle.data.class_map import ClassMap
        from malignet_bundle.data.datalist import load_datalist
        from malignet_bundle.engines.chest_detector import train_chest_detector

        class_map = ClassMap.from_metadata(Path(__file__).resolve().parents[1] / "configs" / "metadata.json")
        train_chest_detector(load_datalist(data / "datalist.json"), data, class_map, detector, epochs=2)
    overrides = json.loads(args.overrides) if args.overrides else None
    if args.compare:
        settings = {label: {**(overrides or {}), **extra} for label, extra in json.loads(args.compare).items()}
        ratios = compare_settings(
            data, detector, work / "trainers", settings, args.steps, args.warmup, args.rounds, args.threads
        )
        print("| setting | Mask R-CNN img/s | ratio | MaligNet img/s | ratio |\n|---|---|---|---|---|")
        for label, models in ratios.items():
            m, g = models["maskrcnn"], models["malignet"]
            print(f"| {label} | {m['median']:.2f} | {m['ratio']:.2f}x | {g['median']:.2f} | {g['ratio']:.2f}x |")
        write_json_atomic({"args": vars(args), "compare": ratios}, args.json or work / "compare.json")
        return
    results = profile_training(
        data, detector, work / "trainers", args.steps, args.warmup, args.threads, overrides, args.operators
    )
    print(format_breakdown(results))
    for name, result in results.items():
        for op, seconds in result.get("operators", []):
            print(f"{name:9s} {seconds:8.3f} s  {op}")
    write_json_atomic({"args": vars(args), "results": results}, args.json or work / "profile.json")


if __name__ == "__main__":
    main()

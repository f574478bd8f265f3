"""The short table at the end of ``make demo``: what the model scored on the test split, and where to look.

    python scripts/summarize_evaluation.py runs/evaluation/metrics.json --overlay runs/ground_truth_vs_prediction.png

Reads the ``metrics.json`` that ``evaluate.json`` writes and prints the threshold-free ranking figures (AP50,
FROC CPM) and Tables 4, 5 and 7 at the model's operating threshold (chosen on the validation split) and at
the thesis's fixed 0.7.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (label, metric name without the test_ / test_operating_ prefix)
THRESHOLDED = (
    ("mean F1 (Table 4)", "mean_f1"),
    ("localization F1 (Table 5)", "localization_f1"),
    ("metastasis F1, patient (Table 7)", "metastasis_patient_f1"),
)
RANKING = (("AP50", "ap50"), ("FROC CPM", "froc_cpm"))


def summary(metrics_path: Path, prefix: str = "test_") -> str:
    """A Markdown table of the test figures in ``metrics_path`` (an ``evaluate.json`` ``metrics.json``).

    Raises:
        FileNotFoundError: when ``metrics_path`` does not exist (evaluation has not run).
        KeyError: when it lacks the AP50 or mean F1 figures (not an evaluation of this bundle).
    """
    content = json.loads(metrics_path.read_text())
    metrics, thresholds = content["metrics"], content.get("thresholds", {})
    protocol = thresholds.get("protocol", {}).get("threshold", 0.7)
    operating = thresholds.get("operating")
    lines = []
    if operating is not None:
        header = f"| test split | at the operating threshold {operating['threshold']:g} | at {protocol:g} (thesis) |"
        lines += [header, "|---|---|---|"]
        for label, key in THRESHOLDED:
            lines.append(f"| {label} | {metrics[f'{prefix}operating_{key}']:.3f} | {metrics[f'{prefix}{key}']:.3f} |")
    else:
        lines += [f"| test split | at {protocol:g} (thesis) |", "|---|---|"]
        lines += [f"| {label} | {metrics[f'{prefix}{key}']:.3f} |" for label, key in THRESHOLDED]
    blank = " |" if operating is not None else ""
    lines += [f"| {label} (any threshold) | {metrics[f'{prefix}{key}']:.3f} |{blank}" for label, key in RANKING]
    if operating is not None:
        lines.append(f"\noperating threshold: {operating.get('source', 'stored with the model')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.json written by evaluate.json")
    parser.add_argument("--overlay", default=None, help="a picture to point the reader to")
    args = parser.parse_args(argv)
    path = Path(args.metrics)
    if not path.is_file():
        sys.exit(f"{path}: no evaluation found (run `make evaluate` first)")
    print(summary(path))
    print(f"\nfull report: {path.parent / 'metrics.md'}")
    if args.overlay:
        print(f"detections beside the ground truth: {args.overlay}")


if __name__ == "__main__":
    main()

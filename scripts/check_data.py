"""Check a training dataset or an inference run's inputs: every problem in one pass, exit 1 on any error.

One line per problem, naming the file; warnings (e.g. views assumed by frame order) are listed and counted.
"""

from __future__ import annotations

import argparse
import sys

from malignet_bundle.data.check import check_dataset, check_inference_inputs
from malignet_bundle.data.class_map import ClassMap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--datalist", help="training datalist: labeled, unlabeled, validation and test splits")
    mode.add_argument(
        "--inference",
        help="what inference would read: a DICOM file, a folder of studies, or a datalist (its --split; "
        "unlabeled studies are fine)",
    )
    parser.add_argument("--dataset_dir", help="folder the datalist's paths are relative to (required with --datalist)")
    parser.add_argument("--split", default="test", help="datalist split read with --inference (default: test)")
    parser.add_argument("--metadata", default="configs/metadata.json", help="bundle metadata with the class map")
    args = parser.parse_args(argv)
    if args.inference is not None:
        report = check_inference_inputs(args.inference, args.dataset_dir, args.split)
    else:
        if args.dataset_dir is None:
            parser.error("--datalist needs --dataset_dir")
        report = check_dataset(args.datalist, args.dataset_dir, ClassMap.from_metadata(args.metadata))
    for problem in report.problems:
        print(problem)
    errors = sum(p.severity == "error" for p in report.problems)
    warnings = len(report.problems) - errors
    lesions = "" if args.inference is not None else f"; lesions per class {report.lesions}"
    print(f"checked {report.items}{lesions}; {errors} errors, {warnings} warnings")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

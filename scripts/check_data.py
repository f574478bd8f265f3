"""Check a dataset: every problem in one pass, one line per problem naming the file; exit 1 on any error."""

from __future__ import annotations

import argparse
import sys

from malignet_bundle.data.check import check_dataset
from malignet_bundle.data.class_map import ClassMap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--metadata", default="configs/metadata.json", help="bundle metadata with the class map")
    args = parser.parse_args(argv)
    report = check_dataset(args.datalist, args.dataset_dir, ClassMap.from_metadata(args.metadata))
    for problem in report.problems:
        print(problem)
    errors = sum(p.severity == "error" for p in report.problems)
    warnings = len(report.problems) - errors
    print(f"checked {report.items} items; lesions per class {report.lesions}; {errors} errors, {warnings} warnings")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

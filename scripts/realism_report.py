"""Realism report: synthetic whole-body bone scans against real ones (a folder of real DICOM, or built-in figures).

Writes report.md (the table), report.json, histogram.png, spectrum.png and side_by_side.png to --out.
Example: compare the two generator versions with the real-scan reference built into the bundle:

    scripts/realism_report.py --synthetic v1=data/synthetic_v1 v2=data/synthetic_v2 --out runs/realism
"""

from __future__ import annotations

import argparse
import logging

from malignet_bundle.data.realism import realism_report


def _named(value: str) -> tuple[str, str]:
    name, sep, folder = value.partition("=")
    return (name, folder) if sep and name and folder else (value.rstrip("/").split("/")[-1], value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--synthetic", nargs="+", required=True, help="dataset folders, each as FOLDER or NAME=FOLDER (the label)"
    )
    parser.add_argument("--real", default=None, help="folder of real DICOM NM scans; default: the built-in figures")
    parser.add_argument("--views", nargs="+", default=["anterior"], choices=["anterior", "posterior"])
    parser.add_argument("--limit", type=int, default=None, help="at most this many views per dataset")
    parser.add_argument("--tolerance", type=float, default=0.3, help="largest relative gap that still meets a range")
    parser.add_argument("--out", required=True, help="report folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    synthetic = dict(_named(v) for v in args.synthetic)
    if len(synthetic) != len(args.synthetic):
        parser.error("two synthetic datasets share a name; give them NAME=FOLDER")
    try:
        report = realism_report(synthetic, args.out, args.real, args.views, args.limit, args.tolerance)
    except ValueError as e:
        parser.exit(2, f"realism_report: {e}\n")
    with open(f"{args.out}/report.md", encoding="utf-8") as handle:
        print(handle.read())
    for name, rows in report["table"].items():
        unmet = [stat for stat, row in rows.items() if row.get("meets") is False]
        print(f"{name}: {'outside: ' + ', '.join(unmet) if unmet else 'meets every reference range'}")


if __name__ == "__main__":
    main()

"""Generate the built-in synthetic whole-body bone-scan dataset (DICOM NM + COCO + datalist.json)."""

from __future__ import annotations

import argparse
import json
import os
import time

from malignet_bundle.data.synthesize import GENERATOR_VERSION, GENERATOR_VERSIONS, write_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--labeled", type=int, default=40)
    parser.add_argument("--unlabeled", type=int, default=200)
    parser.add_argument("--validation", type=int, default=10)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout",
        choices=["multiframe", "single"],
        default="multiframe",
        help="one 2-frame NM file per study, or one single-frame file per view",
    )
    parser.add_argument(
        "--generator_version",
        type=int,
        choices=GENERATOR_VERSIONS,
        default=GENERATOR_VERSION,
        help="1: the first generator (reproducible); 2: with the gamma-camera model (blur by depth, scatter,"
        f" room background) and real-scan hot-spot levels (default {GENERATOR_VERSION})",
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = write_dataset(
        args.out,
        args.labeled,
        args.unlabeled,
        args.validation,
        args.test,
        seed=args.seed,
        layout=args.layout,
        workers=args.workers,
        progress=not args.quiet,
        version=args.generator_version,
    )
    elapsed = time.perf_counter() - start
    n = sum(summary["studies"].values())
    print(json.dumps(summary, indent=1))
    print(f"wrote {n} studies to {args.out} in {elapsed:.1f} s ({n / elapsed:.1f} studies/s, {args.workers} workers)")


if __name__ == "__main__":
    main()

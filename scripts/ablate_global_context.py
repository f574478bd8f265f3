"""Does a trained classifier read its per-image global vector? Evaluate finished benchmark runs without it.

    python scripts/ablate_global_context.py --output_dir /tmp/global_context --run_dirs RUN [RUN ...]

where RUN is e.g. ``<benchmark output_dir>/runs/steps1600/fpn_global-l1-s0``.

Each run (a folder of ``scripts/benchmark_ssl.py`` with ``result.json`` and ``models/model.pt``, only read)
is evaluated on its test split (``--split labeled``: the images it was trained on) three times: with the
global vectors as trained, with their mean in place of every image's, and with another patient's (see
``malignet_bundle/experiments/global_context.py``). Writes ``<output_dir>/<run>/global_context.json`` per
run and ``<output_dir>/global_context.md`` with the changes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from malignet_bundle.atomic_io import write_text_atomic
from malignet_bundle.experiments.global_context import ablate_global_context, ablation_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dirs", nargs="+", type=Path, required=True, help="finished benchmark run folders")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the evaluations and the table go")
    parser.add_argument("--split", default="test", help="datalist split: test, or labeled (the training images)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = [ablate_global_context(run_dir, args.output_dir / run_dir.name, args.split) for run_dir in args.run_dirs]
    table = ablation_table(results)
    write_text_atomic(table, args.output_dir / "global_context.md")
    print(table)


if __name__ == "__main__":
    main()

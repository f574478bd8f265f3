"""Train the chest detector on a dataset's labeled views and report box Jaccard on its test views."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.chest_detector import train_chest_detector


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_dir", default="data/synthetic")
    parser.add_argument("--datalist", default=None, help="default: DATASET_DIR/datalist.json")
    parser.add_argument("--metadata", default="configs/metadata.json")
    parser.add_argument("--output", default="models/chest_detector.pt")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.dataset_dir)
    metrics = train_chest_detector(
        load_datalist(args.datalist or root / "datalist.json"),
        root,
        ClassMap.from_metadata(args.metadata),
        args.output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    print(json.dumps(metrics, indent=1))
    print(f"chest detector: {args.output}")


if __name__ == "__main__":
    main()

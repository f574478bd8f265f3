"""Contact sheet of dataset studies: both views, lesions outlined by class, chest box in purple."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.data.nm_dicom import read_nm_views
from malignet_bundle.outputs.overlay import render_overlay, save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--datalist", default=None, help="default: DATASET_DIR/datalist.json")
    parser.add_argument("--split", default="labeled")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--variety", action="store_true", help="pick studies that show many lesion classes")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    root = Path(args.dataset_dir)
    items = load_datalist(args.datalist or root / "datalist.json")[args.split]
    if args.variety:  # studies showing the most lesion classes first, to show what the data holds
        items = sorted(
            items,
            key=lambda it: (
                -len({a["category_id"] for a in json.loads((root / it["label"]).read_text())["annotations"]})
            ),
        )
    panels, seen = [], []
    for item in items:
        if item["patient_id"] not in seen:
            if len(seen) == args.studies:
                break
            seen.append(item["patient_id"])
        nm = read_nm_views(root / item["image"])
        frame = nm.frame(item["view"])
        ann = load_annotation(root / item["label"], frame.shape, view=item["view"], image_file=item["image"])
        counts = (
            ", ".join(f"{ann.class_names.count(n)} {n.replace('post_', '')[:5]}" for n in sorted(set(ann.class_names)))
            or "none"
        )
        caption = f"{item['patient_id']} {item['view'][:4]}\n{counts}"
        panels.append((caption, render_overlay(frame, ann.masks, ann.class_names, ann.chest_box)))
    save_contact_sheet(
        panels,
        args.out,
        columns=min(len(panels), 8),
        title="Synthetic whole-body bone scans (stored orientation; posterior as acquired)",
    )
    print(f"contact sheet of {len(seen)} studies: {args.out}")


if __name__ == "__main__":
    main()

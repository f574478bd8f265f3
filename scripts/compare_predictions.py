"""Ground truth beside prediction for studies of a split (thesis Figs. 15–16), as one PNG.

Each row is one study: anterior ground truth, anterior prediction, posterior ground truth, posterior
prediction, lesion contours coloured by class, zoomed to the chest crop the network saw (``--whole_body``
shows the whole view). The model, its preprocessing and postprocessing come from ``configs/inference.json``,
whose evaluator predicts the studies (without writing its own outputs); the options below override its IDs
of the same name.
"""

from __future__ import annotations

import argparse

import numpy as np
from monai.bundle import ConfigWorkflow

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.engines.inference import predict_studies
from malignet_bundle.outputs.overlay import render_overlay, save_contact_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config_file", nargs="+", default=["configs/inference.json"], help="configs merged in order (+ cpu.json)"
    )
    parser.add_argument("--studies", type=int, default=6, help="how many studies (rows)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--bundle_root", default=None)
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--ckpt_dir", default=None, help="folder of model.pt and chest_detector.pt")
    parser.add_argument("--split", default=None, help="datalist split (default: the config's, test)")
    parser.add_argument("--score_threshold", type=float, default=None)
    parser.add_argument("--whole_body", action="store_true", help="whole views instead of the chest crops")
    args = parser.parse_args(argv)
    overrides = {
        key: getattr(args, key)
        for key in ("bundle_root", "dataset_dir", "ckpt_dir", "split", "score_threshold")
        if getattr(args, key) is not None
    }
    workflow = ConfigWorkflow(
        config_file=args.config_file,
        logging_file=False,
        workflow_type="infer",
        max_studies=args.studies,
        handlers=[],  # the picture below is the only output
        **overrides,
    )
    workflow.initialize()  # loads the weights
    class_map = workflow.parser.get_parsed_content("class_map")
    studies = workflow.parser.get_parsed_content("studies")
    predictions = predict_studies(workflow.evaluator)
    workflow.finalize()
    panels = []

    def zoom(rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
        if args.whole_body:
            return rgb
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return rgb[max(y0 - 4, 0) : y1 + 4, max(x0 - 4, 0) : x1 + 4]

    for study, prediction in zip(studies, predictions, strict=True):
        labels = {item.get("view"): item.get("label") for item in study.items}
        for view in prediction.views:
            annotation_path = labels.get(view.view) or labels.get(None)
            if annotation_path:
                truth = load_annotation(annotation_path, view.image.shape, view=view.view)
                gt = zoom(render_overlay(view.image, truth.masks, truth.class_names, view.chest_box), view.chest_box)
                panels.append((f"{study.study_id} {view.view}\nground truth ({len(truth.class_names)})", gt))
            names = [class_map.name(int(label)) for label in view.labels]
            pred = zoom(render_overlay(view.image, view.masks, names, view.chest_box), view.chest_box)
            panels.append((f"{study.study_id} {view.view}\nprediction ({len(names)})", pred))
    size = (3.0, 6.2) if args.whole_body else (3.0, 2.9)
    save_contact_sheet(panels, args.out, columns=4, title="ground truth | prediction", panel_inches=size)
    print(f"wrote {args.out} ({len(studies)} studies)")


if __name__ == "__main__":
    main()

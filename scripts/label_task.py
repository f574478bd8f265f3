"""The bundle's side of the MONAI Label app: run one infer or train request in the bundle's environment.

    python scripts/label_task.py infer --image studies/P1.dcm --output_dir /tmp/out --ckpt_dir models
    python scripts/label_task.py train --manifest manifest.json --work_dir runs/label_train --ckpt_dir models
    python scripts/label_task.py train --method mean_teacher --manifest manifest.json --work_dir runs/mt
    python scripts/label_task.py infer --network unet --image studies/P1.dcm --output_dir /tmp/out

``--network`` picks the served network (``malignet``, the default; ``unet``; ``double_unet``: the pixel-level
baselines of ``configs/segmentation.json``); ``--method`` the semi-supervised method, among those of the
network (MaligNet: ``ladder`` by default, ``mean_teacher``, ``supervised``; a U-Net: ``supervised`` by default,
``mean_teacher``). The app (``monailabel_app/``) starts it; by hand it is a quick way to see what the app will
return.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from malignet_bundle.engines.label_tasks import (
    NetworkMismatchError,
    infer_study,
    load_overrides,
    train_on_datastore,
)
from malignet_bundle.networks.selection import DEFAULT_NETWORK, NETWORKS
from malignet_bundle.semi_supervised.selection import METHODS, default_method, method_overrides

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    for name in ("infer", "train"):
        task = tasks.add_parser(name)
        task.add_argument("--bundle_root", default=str(ROOT))
        task.add_argument("--ckpt_dir", default=str(ROOT / "models"))
        task.add_argument("--overrides", default=None, help="JSON file of bundle config overrides")
        task.add_argument(
            "--network", default=DEFAULT_NETWORK, choices=list(NETWORKS), help="the network model.pt holds"
        )
    infer = tasks.choices["infer"]
    infer.add_argument("--image", required=True)
    infer.add_argument("--output_dir", required=True)
    infer.add_argument(
        "--score_threshold",
        type=float,
        default=None,
        help="detection confidence kept (default: the model's own operating threshold, model.json; 0.7 without one)",
    )
    infer.add_argument("--device", default=None)
    train = tasks.choices["train"]
    train.add_argument(
        "--manifest", required=True, help='{"labeled": [[id, image, label]], "unlabeled": [[id, image]]}'
    )
    train.add_argument("--work_dir", required=True)
    train.add_argument("--max_epochs", type=int, default=10)
    train.add_argument("--batch_size", type=int, default=4)
    train.add_argument("--learning_rate", type=float, default=0.001)
    train.add_argument("--validation_fraction", type=float, default=0.2)
    train.add_argument("--from_scratch", action="store_true")
    train.add_argument("--tracking", default=None, choices=["mlflow"])
    train.add_argument(
        "--method",
        default=None,
        choices=sorted(METHODS),
        help="default: the network's (ladder for malignet, supervised for a U-Net); "
        + "; ".join(f"{name}: {what}" for name, what in METHODS.items()),
    )
    args = parser.parse_args(argv)
    overrides = load_overrides(args.overrides)
    try:
        if args.task == "infer":
            result = infer_study(
                args.image,
                args.output_dir,
                args.bundle_root,
                args.ckpt_dir,
                overrides,
                args.score_threshold,
                args.device,
                network=args.network,
            )
            print(json.dumps({"lesions": len(result["lesions"]), "output_dir": args.output_dir}))
            return
        # the method's overrides first, so an --overrides file (e.g. a network or a burn-in) still wins
        fine_tuning = not args.from_scratch and (Path(args.ckpt_dir) / "model.pt").is_file()
        try:
            method = method_overrides(
                args.method or default_method(args.network),
                Path(args.bundle_root) / "configs",
                teacher_ready=fine_tuning,
                network=args.network,
            )
        except ValueError as e:  # before any file is written: e.g. 'ladder' for a U-Net, which has none
            parser.error(str(e))
        result = train_on_datastore(
            json.loads(Path(args.manifest).read_text()),
            args.work_dir,
            args.bundle_root,
            args.ckpt_dir,
            {**method, **overrides},
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            validation_fraction=args.validation_fraction,
            from_scratch=args.from_scratch,
            tracking=args.tracking,
            network=args.network,
        )
        print(json.dumps(result))
    except NetworkMismatchError as e:
        # the served weights are another network's: one line naming model.pt and the network, which the app
        # shows; not the state-dict keys of the traceback
        parser.exit(2, f"label_task {args.task}: {e}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()

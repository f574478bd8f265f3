"""Semi-supervised fine-tuning of the served network (MaligNet unless told otherwise) as a MONAI Label train task.

A custom task rather than MONAI Label's ``BundleTrainTask``: that one hands a bundle a list of
image/label pairs; MaligNet trains on per-view items with instance annotations *and* on the studies nobody
has labeled yet (the ladder cost, or a mean teacher's pseudo-labels), which ``BundleTrainTask`` has no
place for. The task lists the datastore's studies with and without a final label and the bundle's
environment does the rest (``malignet_bundle.engines.label_tasks.train_on_datastore``, with the chosen
method's config overrides: ``malignet_bundle.semi_supervised.selection``, and the network's config files:
``malignet_bundle.networks.selection``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.bundle import BundleRunner
from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.networks.selection import DESCRIPTIONS
from malignet_bundle.semi_supervised.selection import check_method, default_method, network_methods

logger = logging.getLogger(__name__)


class MaligNetTrainTask(TrainTask):
    """Fine-tune on the final labels plus every unlabeled study, then serve the new weights.

    Request params (defaults in :meth:`config`): ``max_epochs``, ``batch_size``, ``learning_rate``,
    ``validation_fraction``, ``from_scratch`` (ignore the served weights), ``tracking`` (``"mlflow"``),
    ``method``: the semi-supervised method, one of the runner's network's
    (:func:`~malignet_bundle.semi_supervised.selection.network_methods`). MaligNet: ``ladder``, the default;
    ``mean_teacher``: the ladder plus the served model as an EMA teacher labeling the unlabeled studies from
    the first step; ``supervised``: the annotated studies only. A pixel-level U-Net (``unet``,
    ``double_unet``): ``supervised``, the default; ``mean_teacher``: the served model as an EMA teacher whose
    class probabilities the student matches on the unlabeled studies, at full weight from the first step;
    ``ladder`` is refused (a U-Net has no ladder pyramid).
    Each training gets its own folder under ``work_root``. The served ``model.pt`` is replaced only when the
    training finished and the new model's validation mean F1 is not worse than the served model's on the
    same validation split; otherwise the new model is kept beside it as ``model_candidate_<time>.pt`` and the
    result says why (``replaced``, ``candidate``, ``decision``).
    """

    def __init__(self, runner: BundleRunner, work_root: str) -> None:
        self.methods = network_methods(runner.network)
        super().__init__(
            f"{DESCRIPTIONS[runner.network]}; trained on the labeled studies (method: "
            + "; ".join(f"{name}: {what}" for name, what in self.methods.items())
            + ")"
        )
        self.runner, self.work_root = runner, Path(work_root)

    def config(self) -> dict[str, Any]:
        """Defaults the client shows and may change per request."""
        return {
            "max_epochs": 10,
            "batch_size": 4,
            "learning_rate": 0.001,
            "validation_fraction": 0.2,
            "from_scratch": False,
            "tracking": "",
            "method": default_method(self.runner.network),
        }

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train on the datastore; returns the bundle's summary (views used, best validation F1, model)."""
        params = {**self.config(), **{k: v for k, v in request.items() if k in self.config()}}
        method = str(params["method"])
        # before any file is written: the client sees which names exist for the served network, and why not
        # another (a U-Net has no ladder)
        check_method(method, self.runner.network)
        final = DefaultLabelTag.FINAL.value
        manifest = {
            "labeled": [
                [
                    i,
                    datastore.get_image_uri(i),
                    datastore.get_label_uri(datastore.get_label_by_image_id(i, final), final),
                ]
                for i in datastore.get_labeled_images(label_tag=final)
            ],
            "unlabeled": [[i, datastore.get_image_uri(i)] for i in datastore.get_unlabeled_images(label_tag=final)],
        }
        work = self.work_root / time.strftime("%Y%m%d_%H%M%S")
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, work / "manifest.json")
        args = ["--manifest", str(work / "manifest.json"), "--work_dir", str(work)]
        args += ["--max_epochs", str(int(params["max_epochs"])), "--batch_size", str(int(params["batch_size"]))]
        args += ["--learning_rate", str(float(params["learning_rate"]))]
        args += ["--validation_fraction", str(float(params["validation_fraction"]))]
        if str(params["from_scratch"]).lower() == "true":
            args.append("--from_scratch")
        if params["tracking"]:
            args += ["--tracking", str(params["tracking"])]
        args += ["--method", method]
        logger.info(
            "training %s (%s) on %d labeled, %d unlabeled studies",
            self.runner.network,
            method,
            len(manifest["labeled"]),
            len(manifest["unlabeled"]),
        )
        self.runner.run("train", *args, stream=True)
        result = json.loads((work / "result.json").read_text())
        logger.info("%s training: %s", self.runner.network, result.get("decision", ""))
        return result

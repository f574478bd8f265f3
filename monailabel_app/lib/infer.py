"""The served network as a MONAI Label infer task: a study in, a class label map and the lesion list out.

The network is MaligNet unless the app's conf says otherwise (``network``: ``unet``, ``double_unet``, the
pixel-level baselines); the task runs the same way for each, in the bundle's environment.

A custom task rather than MONAI Label's ``BundleInferTask``: that one runs a bundle's ``preprocessing``,
``inferer`` and ``postprocessing`` on one image in the server's own process and returns one segmentation.
MaligNet reads a DICOM NM file with two views, crops each view's chest with its own detector, returns
instances with scores and maps them back to the stored frames (``configs/inference.json``'s
``predictor``), and it runs in the bundle's environment, not MONAI Label's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.bundle import BundleRunner
from lib.datastore import refusing
from lib.safety import Refused, check_inside
from malignet_bundle.networks.selection import DESCRIPTIONS

logger = logging.getLogger(__name__)


# the infer option's default: the served model's own operating threshold (model.json)
MODEL_THRESHOLD = "model"


def request_threshold(value: Any) -> float | None:
    """The request's ``score_threshold`` as a number in [0, 1], or None for the model's own threshold.

    Args:
        value: a number (or its text), or ``"model"``, ``""`` or None.

    Raises:
        Refused: 400 for anything else, with the reason.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", MODEL_THRESHOLD)):
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise Refused(400, f"score_threshold must be a number in [0, 1] or {MODEL_THRESHOLD!r}, got {value!r}")
    return threshold


class MaligNetInferTask(InferTask):
    """Lesion pre-annotations of one study: label map (class per pixel, stored frames) + lesions as JSON.

    Request params: ``score_threshold``, a number, or ``"model"`` (the default): the served model's own
    operating threshold, chosen on validation when it was trained (``model.json``; 0.7, thesis Table 11, for a
    model without one). A pixel-level network's lesions are scored by their mean foreground probability.
    Each request loads the weights afresh, so a finished training is served at once; weights of another network than
    the runner's fail with the bundle's error naming ``model.pt`` and the network. Only files inside ``studies`` are
    read (the app passes the datastore study's file; anything else is refused with 400).

    Args:
        runner: the bundle runner; its ``network`` is the one served.
        labels: class name → label id.
        studies: the datastore's folder.
    """

    def __init__(self, runner: BundleRunner, labels: dict[str, int], studies: str | os.PathLike) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=f"chest detection, then on both views {DESCRIPTIONS[runner.network]}",
            config={"score_threshold": MODEL_THRESHOLD},
        )
        self.runner = runner
        self.studies = Path(studies)

    def is_valid(self) -> bool:
        """Offered once both the MaligNet and the chest-detector weights exist."""
        return self.runner.weights_ready()

    def get_path(self, validate: bool = True) -> str | None:
        """The model file (MONAI Label's ``/model`` endpoint serves it)."""
        model = self.runner.ckpt_dir / "model.pt"
        return str(model) if model.is_file() or not validate else None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run on ``request["image"]`` (the study's DICOM file); returns the label-map file and the lesions."""
        with refusing():  # the app resolved a datastore id to its file; a second look costs nothing
            image = check_inside(self.studies, str(request.get("image") or ""))
            threshold = request_threshold(request.get("score_threshold", self.config()["score_threshold"]))
        # MONAI Label removes the returned label file once it is sent, but not a folder around it: the file
        # moves out to the temporary folder itself, and the run's folder goes with the block, also on failure
        with tempfile.TemporaryDirectory(prefix="malignet_infer_") as folder:
            output = Path(folder)
            args = ["--image", str(image), "--output_dir", str(output)]
            if threshold is not None:
                args += ["--score_threshold", str(threshold)]
            if self.runner.device:
                args += ["--device", self.runner.device]
            self.runner.run("infer", *args)
            result = json.loads((output / "result.json").read_text())
            handle, label_file = tempfile.mkstemp(prefix="malignet_label_", suffix=".nii.gz")
            os.close(handle)
            os.replace(output / "label.nii.gz", label_file)
        logger.info("%s: %d lesions", request["image"], len(result["lesions"]))
        return label_file, result

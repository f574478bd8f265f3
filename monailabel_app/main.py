"""MONAI Label app serving MaligNet: pre-annotations of bone-scan lesions, and fine-tuning on what is annotated.

MONAI Label 0.8.5 and the bundle need different pydicom majors, so this app runs in MONAI Label's own
environment (``.venv-label``, ``make label``) and hands each request to the bundle's environment
(``scripts/label_task.py``), exchanging files. Start it with ``make label-server`` or
``monailabel start_server --app monailabel_app --studies <folder> --host 127.0.0.1``; options come as
``--conf <key> <value>``:

- ``bundle_root``: the bundle (default: this repository);
- ``bundle_python``: the bundle environment's interpreter (default ``<bundle_root>/.venv/bin/python``);
- ``ckpt_dir``: where ``model.pt`` and ``chest_detector.pt`` are (default ``<bundle_root>/models``);
- ``overrides``: a JSON file of bundle config overrides for a non-default network (e.g. the ``cpu``
  benchmark's ResNet-18), applied to inference and training alike;
- ``device``: ``cuda`` or ``cpu`` (default: cuda when there is one);
- ``work_dir``: where each training keeps its datalist, converted labels and checkpoints
  (default ``<app>/train_runs``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lib.bundle import BundleRunner
from lib.infer import MaligNetInferTask
from lib.train import MaligNetTrainTask
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

# study files MONAI Label lists: DICOM NM files of whole-body scans
STUDY_EXTENSIONS = ("*.dcm",)


class MaligNetApp(MONAILabelApp):
    """MaligNet's infer and semi-supervised train tasks over a folder of whole-body NM DICOM studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundle_root = Path(conf.get("bundle_root", Path(app_dir).resolve().parent)).resolve()
        self.runner = BundleRunner(
            bundle_root=bundle_root,
            python=conf.get("bundle_python") or str(bundle_root / ".venv" / "bin" / "python"),
            ckpt_dir=Path(conf.get("ckpt_dir", bundle_root / "models")).resolve(),
            overrides=conf.get("overrides") or None,
            device=conf.get("device") or None,
        )
        self.work_dir = conf.get("work_dir") or os.path.join(app_dir, "train_runs")
        metadata = json.loads((bundle_root / "configs" / "metadata.json").read_text())
        channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        self.class_labels = {name: int(label) for label, name in channels.items() if int(label) > 0}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MaligNet",
            description="Semi-supervised bone-lesion instance segmentation on whole-body bone scintigraphy",
            version=metadata["version"],
            labels=self.class_labels,
        )

    def init_datastore(self) -> Datastore:
        """The studies folder as a local datastore of DICOM files (labels go to its ``labels/`` folder)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LocalDatastore(self.studies, extensions=STUDY_EXTENSIONS, auto_reload=True)

    def init_infers(self) -> dict[str, InferTask]:
        """One infer task, ``malignet``: chest detection + MaligNet on every view of a study."""
        return {"malignet": MaligNetInferTask(self.runner, self.class_labels)}

    def init_trainers(self) -> dict[str, TrainTask]:
        """One train task, ``malignet``: fine-tuning on the final labels plus every unlabeled study."""
        return {"malignet": MaligNetTrainTask(self.runner, self.work_dir)}

"""MONAI Label app serving MaligNet (or a pixel-level U-Net): pre-annotations of bone-scan lesions, and fine-tuning.

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
- ``network``: the network ``model.pt`` holds and the app serves and trains
  (``malignet_bundle.networks.selection.NETWORKS``): ``malignet`` (the default), ``unet`` (MONAI's BasicUNet,
  ``configs/segmentation.json``) or ``double_unet`` (``configs/double_unet.json``). The infer and train tasks
  are named after it (``POST /infer/unet``); a U-Net's lesions are the regions of its class-per-pixel map, and
  its train task's ``method`` is ``supervised`` (the default) or ``mean_teacher``
  (``configs/segmentation_mean_teacher.json``); ``ladder`` is refused. Served weights of another network (or
  size, ``overrides``) fail with an error naming ``model.pt`` and the network; an unknown name stops the app
  at start-up;
- ``work_dir``: where each training keeps its datalist, converted labels and checkpoints
  (default ``<app>/train_runs``).

What the server guarantees (``lib/datastore.py``, ``lib/safety.py``): ids, tags and uploads are checked before
any file is read or written, and refused with a 4xx status and the reason; infer serves only studies of the
datastore; the served model is replaced only by a training that is not worse on validation (``lib/train.py``);
and it does not start on every network by default: ``monailabel start_server`` without ``--host`` would
listen on 0.0.0.0, so the app refuses to start unless the host is given.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from fastapi import HTTPException
from lib.bundle import BundleRunner
from lib.datastore import GuardedDatastore, refusing
from lib.infer import MaligNetInferTask
from lib.safety import Refused, check_study_id, explicit_host
from lib.train import MaligNetTrainTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

# study files MONAI Label lists: DICOM NM files of whole-body scans
STUDY_EXTENSIONS = ("*.dcm",)
# hosts that reach only this machine
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_server_host(argv: list[str]) -> None:
    """Refuse to serve when ``monailabel start_server`` was started without ``--host``.

    MONAI Label's default host is 0.0.0.0: a server started by hand without ``--host`` would take requests
    from every network the machine is on, with no authentication unless it was configured. Its argument
    parser cannot say whether the host was given, and the app is created (in the server's process, from
    its lifespan start-up) before uvicorn binds the port, so refusing here means nothing ever listens.
    Another process creating the app (a training's subprocess, uvicorn run directly, whose default is
    127.0.0.1) is not a ``start_server`` and is not checked.

    Raises:
        RuntimeError: saying which ``--host`` to give, when ``argv`` is a ``start_server`` without a host.
    """
    if len(argv) < 2 or argv[1] != "start_server":
        return
    host = explicit_host(argv[2:])
    if host is None:
        raise RuntimeError(
            "MaligNet app: no --host given, and MONAI Label's default (0.0.0.0) would serve every network this "
            "machine is on. Start it with --host 127.0.0.1 (this machine only), or give the network address "
            "explicitly, behind TLS and MONAI Label's authentication (README, 'A shared server')."
        )
    if host not in LOOPBACK:
        logger.warning(
            "MaligNet app: serving on %s, reachable from the network: use TLS (--ssl_keyfile/--ssl_certfile) and "
            "MONAI Label's authentication (MONAI_LABEL_AUTH_ENABLE)",
            host,
        )


class MaligNetApp(MONAILabelApp):
    """The served network's infer and semi-supervised train tasks over a folder of whole-body NM DICOM studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        check_server_host(sys.argv)
        self.runner = BundleRunner.from_conf(conf, app_dir)
        bundle_root = self.runner.bundle_root
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
        """The studies folder as a guarded local datastore of DICOM files (labels go to its ``labels/`` folder).

        A DICOMweb server (``--studies http…``) is not served: the checks of ids, tags and uploads, and the
        guarantee that infer reads only the datastore's studies, are made for a folder.
        """
        if self.studies.startswith(("http://", "https://")):
            raise RuntimeError("MaligNet app: --studies must be a folder of DICOM files; DICOMweb is not supported")
        return GuardedDatastore(self.studies, self.class_labels.values(), extensions=STUDY_EXTENSIONS)

    def init_infers(self) -> dict[str, InferTask]:
        """One infer task, named after the network (``malignet``): chest detection + the network on every view."""
        return {self.runner.network: MaligNetInferTask(self.runner, self.class_labels, self.studies)}

    def init_trainers(self) -> dict[str, TrainTask]:
        """One train task, named after the network: fine-tuning on the final labels plus every unlabeled study."""
        return {self.runner.network: MaligNetTrainTask(self.runner, self.work_dir)}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run an infer task on a study of the datastore, named by its id; anything else is refused.

        MONAI Label's ``infer`` opens ``request["image"]`` as a path whenever such a file exists on the
        server (``/etc/passwd`` was read), and the infer endpoint puts uploads and session images there
        as paths too. Here it must be the id of a study in the datastore: a path or a malformed id is refused
        with 400, an unknown id with 404, and the task gets the study's own file.
        """
        store = datastore or self.datastore()
        with refusing():
            study = check_study_id(request.get("image"), "image (a study id of the datastore)")
            if study not in store.list_images():
                raise Refused(404, f"study {study!r} is not in the datastore: infer serves only datastore studies")
        return super().infer({**request, "image": store.get_image_uri(study)}, store)

    def model_file(self, model: str, validate: bool = True) -> str | None:
        """The served model file; MONAI Label asks with ``validate=False`` only to overwrite it with an upload.

        ``PUT /model/malignet`` copied any uploaded file over ``model.pt``, past the rule that a new model is
        served only when it is not worse on validation; it is refused (403).
        """
        if not validate:
            raise HTTPException(
                status_code=403,
                detail=f"uploading model weights is refused: the served model changes only through the "
                f"{self.runner.network} train task, and only when the new model is not worse on validation",
            )
        return super().model_file(model, validate)

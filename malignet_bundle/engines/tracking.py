"""Run details for MONAI's MLflow handlers, which ``--tracking mlflow`` adds with stock settings.

The stock handlers log losses, metrics, ``max_epochs`` and ``epoch_length``. This hands them the run's
hyper-parameters (logged when the run starts) and extra artifact files (logged when it completes, such as
the best checkpoint). Without ``--tracking`` there is no such handler and nothing happens.

It also hands them the executed config that ``--tracking`` saves as ``<output_dir>/config_<time>.json``:
MONAI 1.6 names that file to the handler as ``<output_dir> + '/config_<time>.json'``, which is an
expression only when ``output_dir`` is one; given on the command line as a plain path (``--output_dir
runs``) it stays an unusable string and the config never reaches MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["attach_run_details"]

logger = logging.getLogger(__name__)


def attach_run_details(
    handlers: Iterable[Any],
    params: Mapping[str, Any],
    artifacts: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
) -> int:
    """Add ``params`` and ``artifacts`` to every ``MLFlowHandler`` in ``handlers``; returns how many.

    Args:
        handlers: an engine's handler list (e.g. ``train#handlers``), after ``--tracking`` patched it.
        params: hyper-parameters to record once per run (values are logged as strings).
        artifacts: files or folders to upload when the run completes.
        output_dir: where ``--tracking`` saved the executed config; its newest ``config_*.json`` is uploaded.
    """
    configs = sorted(Path(output_dir).glob("config_*.json"), key=os.path.getmtime) if output_dir else []
    count = 0
    for handler in handlers:
        if isinstance(handler, MLFlowHandler):
            handler.experiment_param = {**(handler.experiment_param or {}), **dict(params)}
            kept = tuple(a for a in handler.artifacts if a and os.path.exists(a))
            handler.artifacts = kept + tuple(str(c) for c in configs[-1:] if str(c) not in kept) + tuple(artifacts)
            count += 1
    if count:
        logger.info("MLflow will record %d hyper-parameters and %d extra artifacts", len(params), len(artifacts))
    return count

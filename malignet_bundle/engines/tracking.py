"""Run details for MONAI's MLflow handlers, which ``--tracking mlflow`` adds with stock settings.

The stock handlers log losses, metrics, ``max_epochs`` and ``epoch_length``. This hands them the run's
hyper-parameters (logged when the run starts) and extra artifact files (logged when it completes, such as
the best checkpoint). Without ``--tracking`` there is no such handler and nothing happens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["attach_run_details"]

logger = logging.getLogger(__name__)


def attach_run_details(handlers: Iterable[Any], params: Mapping[str, Any], artifacts: Sequence[str] = ()) -> int:
    """Add ``params`` and ``artifacts`` to every ``MLFlowHandler`` in ``handlers``; returns how many.

    Args:
        handlers: an engine's handler list (e.g. ``train#handlers``), after ``--tracking`` patched it.
        params: hyper-parameters to record once per run (values are logged as strings).
        artifacts: files or folders to upload when the run completes.
    """
    count = 0
    for handler in handlers:
        if isinstance(handler, MLFlowHandler):
            handler.experiment_param = {**(handler.experiment_param or {}), **dict(params)}
            handler.artifacts = tuple(a for a in handler.artifacts if a) + tuple(artifacts)
            count += 1
    if count:
        logger.info("MLflow will record %d hyper-parameters and %d extra artifacts", len(params), len(artifacts))
    return count

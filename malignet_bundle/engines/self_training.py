"""Former home of :func:`pseudo_label`; the method now lives in :mod:`malignet_bundle.semi_supervised.self_training`.

Kept so that configs and code written against ``malignet_bundle.engines.self_training.pseudo_label`` run on.
"""

from malignet_bundle.semi_supervised.self_training import pseudo_label

__all__ = ["pseudo_label"]

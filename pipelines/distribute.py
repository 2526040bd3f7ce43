"""The distribution strategy of a training job (DESIGN.md section 8).

``TF_CONFIG`` naming more than one worker gives `tf.distribute.MultiWorkerMirroredStrategy`
(set by hand, by a cluster scheduler, or by Ray Train); otherwise the default single-device
strategy. The training code is the same either way.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from core.errors import ConfigError

logger = logging.getLogger(__name__)


def cluster_workers(tf_config: str | None) -> int:
    """Number of workers named by a ``TF_CONFIG`` value (1 when unset).

    Raises:
        ConfigError: ``TF_CONFIG`` is not valid JSON or has no ``cluster.worker`` list.
    """
    if not tf_config:
        return 1
    try:
        cluster = json.loads(tf_config)["cluster"]
        workers = cluster.get("worker", []) + cluster.get("chief", [])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"TF_CONFIG is not a valid cluster spec ({error}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from error
    return max(len(workers), 1)


def make_strategy() -> tf.distribute.Strategy:
    """Multi-worker mirrored strategy when ``TF_CONFIG`` names several workers, else default."""
    workers = cluster_workers(os.environ.get("TF_CONFIG"))
    if workers > 1:
        logger.info("training on %d workers (MultiWorkerMirroredStrategy)", workers)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()

"""The distribution strategy of a training job (docs/design.md §10).

``TF_CONFIG`` naming more than one worker gives `tf.distribute.MultiWorkerMirroredStrategy`
(set by hand, by a cluster scheduler, or by Ray Train's ``TensorflowTrainer``); otherwise the
default single-device strategy. The training code is the same either way.

Every worker runs the whole job (same data, same config) and takes part in every collective
step; only the **chief** writes artifacts. The chief is the ``chief`` task when the cluster has
one, else ``worker`` 0 (TensorFlow's convention). Other workers must not touch the bundle store:
two writers would race on staging and on ``CURRENT``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from core.errors import ConfigError

logger = logging.getLogger(__name__)

_STRATEGIES: dict[str, tf.distribute.Strategy] = {}

_EXAMPLE = (
    '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
)


def _parse(tf_config: str) -> dict[str, Any]:
    try:
        payload = json.loads(tf_config)
        cluster = payload["cluster"]
        if not isinstance(cluster, dict):
            raise TypeError("cluster is not an object")
        for kind in ("worker", "chief"):
            if not isinstance(cluster.get(kind, []), list):
                raise TypeError(f"cluster.{kind} is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(
            f"TF_CONFIG is not a valid cluster spec ({error}); expected {_EXAMPLE}"
        ) from error
    return payload


def cluster_workers(tf_config: str | None) -> int:
    """Number of training workers named by a ``TF_CONFIG`` value (1 when unset).

    ``chief`` and ``worker`` tasks train; an ``evaluator`` or ``ps`` task does not count.

    Raises:
        ConfigError: ``TF_CONFIG`` is not valid JSON or has no ``cluster`` object.
    """
    if not tf_config:
        return 1
    cluster = _parse(tf_config)["cluster"]
    return max(len(cluster.get("worker", [])) + len(cluster.get("chief", [])), 1)


def task_of(tf_config: str | None) -> tuple[str, int]:
    """``(task type, index)`` of this process; ``("worker", 0)`` when ``TF_CONFIG`` is unset.

    Raises:
        ConfigError: Several workers but no valid ``task`` entry.
    """
    if not tf_config:
        return "worker", 0
    payload = _parse(tf_config)
    task = payload.get("task")
    if task is None and cluster_workers(tf_config) == 1:
        return "worker", 0
    try:
        return str(task["type"]), int(task.get("index", 0))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            f"TF_CONFIG has no valid task entry ({error}); every worker needs its own, e.g. "
            f"{_EXAMPLE}"
        ) from error


def is_chief(tf_config: str | None = None) -> bool:
    """Whether this process writes artifacts: the ``chief`` task, else worker 0.

    Args:
        tf_config: A ``TF_CONFIG`` value; by default the environment's.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    kind, index = task_of(tf_config)
    if not tf_config:
        return True
    has_chief = bool(_parse(tf_config)["cluster"].get("chief"))
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def describe_task(tf_config: str | None = None) -> str:
    """``"worker 1 of 2"`` (``" (chief)"`` appended for the chief), for log lines."""
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    kind, index = task_of(tf_config)
    chief = " (chief)" if is_chief(tf_config) else ""
    return f"{kind} {index} of {cluster_workers(tf_config)}{chief}"


def make_strategy() -> tf.distribute.Strategy:
    """Multi-worker mirrored strategy when ``TF_CONFIG`` names several workers, else default.

    A multi-worker strategy configures TensorFlow's collective ops for the process, which can
    happen once: call this before any other TensorFlow work, and it returns the same strategy
    when called again (a retrain trains both models under one strategy).

    Raises:
        ConfigError: Invalid ``TF_CONFIG``.
    """
    tf_config = os.environ.get("TF_CONFIG")
    workers = cluster_workers(tf_config)
    if workers == 1:
        return tf.distribute.get_strategy()
    if tf_config not in _STRATEGIES:
        logger.info(
            "training as %s (MultiWorkerMirroredStrategy); the chief writes the artifacts",
            describe_task(tf_config),
        )
        _STRATEGIES[tf_config] = tf.distribute.MultiWorkerMirroredStrategy()  # type: ignore[index]
    return _STRATEGIES[tf_config]  # type: ignore[index]


_BARRIERS: dict[int, Any] = {}


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it (a collective all-reduce); a no-op for one.

    Workers that write nothing wait here for the chief to finish writing, so no worker exits
    while the chief still runs: TensorFlow's coordination service treats a vanished worker as
    crashed and aborts the cluster's collectives. When the chief dies instead, the waiting
    workers get an error rather than hanging.
    """
    if strategy.num_replicas_in_sync == 1:
        return
    if id(strategy) not in _BARRIERS:

        @tf.function
        def arrive() -> Any:
            def one() -> tf.Tensor:
                context = tf.distribute.get_replica_context()
                return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0))

            return strategy.run(one)

        _BARRIERS[id(strategy)] = arrive
    arrived = strategy.experimental_local_results(_BARRIERS[id(strategy)]())
    logger.debug("barrier: %d replicas arrived", int(arrived[0].numpy()))


def chief_consensus(
    strategy: tf.distribute.Strategy,
) -> Callable[[Sequence[float]], list[float]] | None:
    """A function replacing a worker's figures by the chief's (replica 0's) on every worker.

    For `core.training.EarlyStopping` under several replicas: every worker passes its own epoch
    figures and gets the same list back, so all take the same stopping decision. A collective
    all-reduce (a sum in which only replica 0 contributes); every worker must call it the same
    number of times. None for a single replica, where there is nothing to agree on.
    """
    if strategy.num_replicas_in_sync == 1:
        return None

    @tf.function
    def broadcast(values: tf.Tensor) -> tf.Tensor:
        def from_replica_zero(local: tf.Tensor) -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            mine = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), local.dtype)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, local * mine)

        return strategy.run(from_replica_zero, args=(values,))

    def consensus(values: Sequence[float]) -> list[float]:
        result = broadcast(tf.constant(list(values), dtype=tf.float64))
        first = strategy.experimental_local_results(result)[0]
        return [float(v) for v in first.numpy()]

    return consensus

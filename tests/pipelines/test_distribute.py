"""TF_CONFIG parsing: how many workers, which task, who writes."""

import json

import pytest

from core.errors import ConfigError
from pipelines.jobs.distribute import (
    barrier,
    cluster_workers,
    describe_task,
    is_chief,
    make_strategy,
    task_of,
)


def tf_config(workers=2, index=0, kind="worker", chief=0):
    cluster = {"worker": [f"localhost:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["localhost:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_unset_means_one_worker_that_is_the_chief():
    assert cluster_workers(None) == 1
    assert task_of(None) == ("worker", 0)
    assert is_chief("") is True
    assert describe_task("") == "worker 0 of 1 (chief)"


@pytest.mark.parametrize(
    ("value", "workers", "task", "chief"),
    [
        (tf_config(2, 0), 2, ("worker", 0), True),
        (tf_config(2, 1), 2, ("worker", 1), False),
        (tf_config(2, 0, chief=1), 3, ("worker", 0), False),
        (tf_config(2, 0, kind="chief", chief=1), 3, ("chief", 0), True),
        (tf_config(2, 0, kind="evaluator"), 2, ("evaluator", 0), False),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), 1, ("worker", 0), True),
    ],
)
def test_workers_task_and_chief(value, workers, task, chief):
    assert cluster_workers(value) == workers
    assert task_of(value) == task
    assert is_chief(value) is chief


def test_the_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(2, 1))
    assert not is_chief()
    assert describe_task() == "worker 1 of 2"
    monkeypatch.delenv("TF_CONFIG")
    assert is_chief()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", r"TF_CONFIG is not a valid cluster spec \(Expecting property name"),
        ('{"task": {}}', r"TF_CONFIG is not a valid cluster spec \('cluster'\)"),
        ('{"cluster": {"worker": "a:1"}}', r"cluster.worker is not a list"),
    ],
)
def test_bad_tf_config_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=message):
        cluster_workers(value)


def test_several_workers_need_a_task():
    value = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}})
    with pytest.raises(ConfigError, match="TF_CONFIG has no valid task entry"):
        task_of(value)


def test_single_worker_strategy_and_barrier(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = make_strategy()
    assert strategy.num_replicas_in_sync == 1
    barrier(strategy)  # a no-op, returns at once

"""The tiny models and platforms the pipeline tests share (seconds to train, not quality)."""

from __future__ import annotations

import copy
import functools
from typing import Any

from core.config import SyntheticConfig, VidrecConfig, config_from_dict
from core.schema import Dataset
from pipelines.data.synthetic import SPAN_START, generate_platform

TINY_SECTIONS: dict[str, dict[str, Any]] = {
    "features": {"history_length": 10, "max_tokens": 8},
    "retrieval": {
        "embedding_dim": 16,
        "num_heads": 2,
        "batch_size": 16,
        "max_epochs": 2,
        "patience": 2,
        "extra_negatives": 32,
        "validation_recall_at": 20,
    },
    "ranking": {
        "dim": 16,
        "history_length": 10,
        "hidden_units": [32],
        "candidates": 60,
        "hard_negatives": 6,
        "random_negatives": 2,
        "max_epochs": 1,
        "batch_size": 64,
    },
    "serving": {"candidates": 60},
    "evaluation": {"candidate_ns": [20, 60]},
}


# API keys and request limits of the serving tests (keys must be 16+ characters).
ADMIN_KEY = "admin-key-0123456789abcdef"
INGEST_KEY = "ingest-key-0123456789abcdef"
KEY_ENV = {"VIDREC_API_KEY": ADMIN_KEY, "VIDREC_INGEST_KEY": INGEST_KEY}
# Small bodies keep the limit tests small; the batch limit must fit the body limit.
SMALL_BODIES = {"max_body_bytes": 4096, "max_feedback_batch": 12}


def tiny_sections(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tiny configuration as JSON-able sections, with ``section={key: value}`` overrides."""
    sections = copy.deepcopy(TINY_SECTIONS)
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return sections


def tiny_config(**overrides: dict[str, Any]) -> VidrecConfig:
    """`tiny_sections` as a validated `VidrecConfig`."""
    return config_from_dict(VidrecConfig, tiny_sections(**overrides))


def small_platform(
    seed: int, users: int = 200, videos: int = 150, events: int = 4_000, days: int = 10
) -> Dataset:
    """A seeded synthetic platform small enough for a test."""
    return generate_platform(
        SyntheticConfig(
            num_users=users,
            num_videos=videos,
            num_events=events,
            num_categories=6,
            num_creators=max(1, videos // 8),
            days=days,
            seed=seed,
        )
    )


# The session's shared platform (tests/pipelines/conftest.py): one tiny bundle, trained once by a
# real `vidrec train` on days 0-6, serves the serving tests, is copied by the CLI tests and is
# the serving bundle the nightly retrain (tests/pipelines/test_retrain.py) starts from, with
# days 7-9 arriving as events in the store. Its size is the retrain test's: on less data the
# tiny models learn little more than popularity, and a model trained on shuffled labels is no
# longer clearly worse than the serving one.
SHARED_SEED = 4
SHARED_SIZES = {"users": 300, "videos": 200, "events": 9_000}
SHARED_SPLIT_AT = SPAN_START + 7 * 86_400
# The shared bundle's configuration: the tiny models, and plain TensorFlow on the request path
# (a LiteRT load costs ~12 s: a child process that imports TensorFlow and converts both models;
# the runtimes agree to 1e-5 (tests/ranking, tests/retrieval), test_serve compares a LiteRT
# service with this one, and every test of a real `vidrec serve` process runs LiteRT).
SHARED_SECTIONS = tiny_sections(
    serving={"max_request_history": 30, "request_runtime": "graph", **SMALL_BODIES}
)


@functools.cache
def shared_platform() -> tuple[Dataset, Dataset]:
    """``(base, everything)``: the shared platform's first seven days, and all ten (one pair
    for the session: do not modify them)."""
    everything = small_platform(seed=SHARED_SEED, **SHARED_SIZES)
    early = everything.interactions["timestamp"] < SHARED_SPLIT_AT
    base = Dataset(
        everything.name, everything.interactions.loc[early], everything.videos, everything.users
    )
    return base, everything

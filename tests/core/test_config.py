"""`core.config`: every value of the wrong type is a `ConfigError` naming the field and the type.

Configs arrive as JSON (``--config``, a bundle's ``config.json``), so the types are JSON's: the
tests write payloads as JSON would decode them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

import pytest

from core.config import (
    RankingConfig,
    RetrievalConfig,
    SyntheticConfig,
    VidrecConfig,
    config_from_dict,
    config_to_dict,
)
from core.errors import ConfigError

# Every config dataclass and the dotted prefix its fields are named with.
SECTIONS: list[tuple[type, str]] = [
    (SyntheticConfig, "synthetic"),
    *((hint, name) for name, hint in typing.get_type_hints(VidrecConfig).items()),
]


@pytest.mark.parametrize(
    ("section", "field", "value", "expected", "shown"),
    [
        # int: not a string, a bool or a float, not even a whole one
        ("retrieval", "embedding_dim", "64", "an integer", '"64"'),
        ("retrieval", "embedding_dim", True, "an integer", "true"),
        ("retrieval", "embedding_dim", 64.5, "an integer", "64.5"),
        ("index", "hnsw_m", 32.0, "an integer", "32.0"),
        ("features", "history_length", None, "an integer", "null"),
        # float
        ("retrieval", "dropout", "0.1", "a number", '"0.1"'),
        ("retrain", "tolerance", False, "a number", "false"),
        # bool: neither 0/1 nor a string
        ("index", "normalize", 1, "true or false", "1"),
        ("retrain", "warm_start", "yes", "true or false", '"yes"'),
        # str
        ("index", "kind", 3, "a string", "3"),
        ("serving", "host", None, "a string", "null"),
        # optional str
        ("serving", "api_keys_file", 3, "a string or null", "3"),
        # tuples: a list of the element type
        ("ranking", "hidden_units", 64, "a list of integers", "64"),
        ("ranking", "hidden_units", [64, "32"], "a list of integers", '[64, "32"]'),
        ("index", "ivf_nprobe", [1, True], "a list of integers", "[1, true]"),
        ("evaluation", "ks", [10.5], "a list of integers", "[10.5]"),
        ("index", "refine_k_factor", [1.0, "2"], "a list of numbers", '[1.0, "2"]'),
        ("evaluation", "baselines", "ease", "a list of strings", '"ease"'),
        ("evaluation", "baselines", ["ease", 1], "a list of strings", '["ease", 1]'),
    ],
)
def test_a_value_of_the_wrong_type_names_the_field_and_the_type(
    section, field, value, expected, shown
):
    message = f"{section}.{field}: expected {expected}, got {shown}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        config_from_dict(VidrecConfig, {section: {field: value}})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (64, "retrieval: expected an object, got int"),
        ([1], "retrieval: expected an object, got list"),
    ],
)
def test_a_section_that_is_not_an_object_is_refused(value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        config_from_dict(VidrecConfig, {"retrieval": value})


def test_a_standalone_section_names_its_own_prefix():
    with pytest.raises(
        ConfigError, match=r'^synthetic\.num_users: expected an integer, got "6000"$'
    ):
        config_from_dict(SyntheticConfig, {"num_users": "6000"}, "synthetic")


@pytest.mark.parametrize(("cls", "section"), SECTIONS, ids=[name for _, name in SECTIONS])
def test_every_field_of_every_section_checks_its_type(cls, section):
    # An object is the wrong type for every field that is not a section.
    wrong = {"not": "a value"}
    for field in dataclasses.fields(cls):
        with pytest.raises(ConfigError) as raised:
            config_from_dict(cls, {field.name: wrong}, section)
        assert str(raised.value).startswith(f"{section}.{field.name}: expected "), raised.value
        assert str(raised.value).endswith('got {"not": "a value"}'), raised.value


@pytest.mark.parametrize(
    ("payload", "field", "expected"),
    [
        ({"retrain": {"window_days": 2}}, ("retrain", "window_days"), 2),  # float takes an int
        ({"ranking": {"hidden_units": [8, 4]}}, ("ranking", "hidden_units"), (8, 4)),
        ({"ranking": {"hidden_units": (8,)}}, ("ranking", "hidden_units"), (8,)),
        ({"index": {"refine_k_factor": [1, 2.5]}}, ("index", "refine_k_factor"), (1.0, 2.5)),
        ({"serving": {"api_keys_file": None}}, ("serving", "api_keys_file"), None),
        ({"serving": {"api_keys_file": "/k"}}, ("serving", "api_keys_file"), "/k"),
        ({"features": {"use_user_id": True}}, ("features", "use_user_id"), True),
    ],
)
def test_values_of_the_right_type_are_taken(payload, field, expected):
    config = config_from_dict(VidrecConfig, payload)
    value = getattr(getattr(config, field[0]), field[1])
    assert value == expected
    assert type(value) is type(expected)


def test_range_checks_keep_their_messages_after_the_type_check():
    with pytest.raises(ConfigError, match=r"^retrieval\.embedding_dim: must be >= 2, got 1$"):
        config_from_dict(VidrecConfig, {"retrieval": {"embedding_dim": 1}})
    with pytest.raises(ConfigError, match=r"^retrieval\.temperature: must be > 0, got -1$"):
        config_from_dict(VidrecConfig, {"retrieval": {"temperature": -1}})
    with pytest.raises(ConfigError, match=r"^features\.max_tokens: must be >= 1, got 0$"):
        config_from_dict(VidrecConfig, {"features": {"max_tokens": 0}})


@pytest.mark.parametrize(
    ("cls", "section", "minimum"),
    [(RetrievalConfig, "retrieval", 2), (RankingConfig, "ranking", 1)],
)
def test_the_shared_training_fields_are_checked_under_each_section(cls, section, minimum):
    with pytest.raises(
        ConfigError, match=rf"^{section}\.batch_size: must be >= {minimum}, got {minimum - 1}$"
    ):
        cls(batch_size=minimum - 1)
    cls(batch_size=minimum)
    checks = [
        ({"max_epochs": 0}, rf"^{section}\.max_epochs: must be >= 1, got 0$"),
        ({"patience": 0}, rf"^{section}\.patience: must be >= 1, got 0$"),
        ({"learning_rate": 0.0}, rf"^{section}\.learning_rate: must be > 0$"),
        ({"sparse_learning_rate": 0.0}, rf"^{section}\.sparse_learning_rate: must be > 0$"),
        ({"max_train_seconds": -1.0}, rf"^{section}\.max_train_seconds: must be >= 0$"),
    ]
    for kwargs, message in checks:
        with pytest.raises(ConfigError, match=message):
            cls(**kwargs)


def test_each_model_keeps_its_own_training_defaults():
    assert (RetrievalConfig().batch_size, RetrievalConfig().max_epochs) == (32, 200)
    assert RetrievalConfig().patience == 5
    assert (RankingConfig().batch_size, RankingConfig().max_epochs) == (256, 50)
    assert RankingConfig().patience == 3


@pytest.mark.parametrize("through_json", [False, True])
def test_the_defaults_round_trip(through_json):
    payload: dict[str, Any] = config_to_dict(VidrecConfig())
    if through_json:  # tuples come back as lists
        payload = json.loads(json.dumps(payload))
    assert config_from_dict(VidrecConfig, payload) == VidrecConfig()
    synthetic = config_to_dict(SyntheticConfig())
    assert config_from_dict(SyntheticConfig, synthetic, "synthetic") == SyntheticConfig()


def test_a_changed_config_round_trips_through_json():
    config = VidrecConfig(
        retrieval=RetrievalConfig(embedding_dim=32, num_heads=4, batch_size=8, dropout=0.0),
        ranking=RankingConfig(hidden_units=(16,), engagement_weight=0.0),
    )
    config = dataclasses.replace(
        config,
        serving=dataclasses.replace(config.serving, api_keys_file="/etc/keys", mmr_lambda=1.0),
    )
    payload = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(VidrecConfig, payload) == config

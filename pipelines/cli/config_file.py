"""The ``--config`` file every command reads, with its flag overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import VidrecConfig, config_from_dict
from core.errors import ConfigError


def load_config(path: str | None, overrides: dict[str, dict[str, Any]]) -> VidrecConfig:
    """Configuration from an optional JSON file, then flag overrides per section.

    Raises:
        ConfigError: Unreadable file, unknown keys or invalid values.
    """
    payload: dict[str, Any] = {}
    if path:
        try:
            payload = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as error:  # bad JSON, and bytes that are not UTF-8
            raise ConfigError(f"--config {path}: {error}") from error
    for section, values in overrides.items():
        clean = {k: v for k, v in values.items() if v is not None}
        if clean:
            payload.setdefault(section, {}).update(clean)
    return config_from_dict(VidrecConfig, payload)

"""Model weights in a bundle, for warm starting the next retrain (numpy ``.npz``, no pickles)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import BundleError
from core.io import atomic_write_bytes

WEIGHTS_FILE = "weights.npz"


def save_weights(directory: str | os.PathLike[str], weights: Sequence[np.ndarray]) -> None:
    """Writes ``weights`` (a model's ``get_weights()``, in order) as ``weights.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)})
    atomic_write_bytes(Path(directory) / WEIGHTS_FILE, buffer.getvalue())


def load_weights(directory: str | os.PathLike[str]) -> list[np.ndarray]:
    """Reads what `save_weights` wrote, in order.

    Raises:
        BundleError: The file is missing or unreadable.
    """
    path = Path(directory) / WEIGHTS_FILE
    try:
        with np.load(path, allow_pickle=False) as archive:
            return [archive[name] for name in sorted(archive.files)]
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read {path}: {error}; warm start needs it") from error

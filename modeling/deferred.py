"""A SavedModel loaded on first use.

A server that runs its models from the LiteRT files stored in the bundle
(`modeling.request_runtime.stored_conversion`) never calls the TensorFlow functions on the
request path; only an upload calls the video tower. Loading both SavedModels anyway cost each
worker about 0.7 GB at a million videos (the id tables of both models), in every worker and
for every bundle. `DeferredSavedModel` loads when a function is first called, once, under a
lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from core.errors import BundleError

logger = logging.getLogger(__name__)


class DeferredSavedModel:
    """The SavedModel in ``directory``, loaded by the first call of one of its functions.

    Args:
        directory: The SavedModel directory.
        what: The model, for messages (``"retrieval towers"``).
    """

    def __init__(self, directory: Path, what: str) -> None:
        self.directory = Path(directory)
        self.what = what
        self._loaded: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> Any:
        """The loaded SavedModel, or None before the first call."""
        return self._loaded

    def load(self) -> Any:
        """Loads the SavedModel if it is not yet loaded, and returns it.

        Raises:
            BundleError: It does not load.
        """
        with self._lock:
            if self._loaded is None:
                started = time.perf_counter()
                try:
                    self._loaded = tf.saved_model.load(str(self.directory))
                except (OSError, ValueError, tf.errors.OpError) as error:
                    raise BundleError(
                        f"cannot load the {self.what} from {self.directory}: {error}"
                    ) from error
                logger.info(
                    "loaded the %s on first use in %.1f s", self.what, time.perf_counter() - started
                )
            return self._loaded

    def function(self, name: str) -> Callable[..., Any]:
        """A callable that runs the SavedModel's function ``name``, loading it first."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(self.load(), name)(*args, **kwargs)

        call.__name__ = name
        return call


def signature_input_shape(directory: Path, signature: str, name: str) -> list[int]:
    """The shape of input ``name`` of ``signature``, read from ``saved_model.pb`` without
    loading the model (-1 for unknown dimensions).

    Raises:
        BundleError: The file, the signature or the input is missing.
    """
    path = Path(directory) / "saved_model.pb"
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString(path.read_bytes())
        spec = model.meta_graphs[0].signature_def[signature].inputs[name]
    except (OSError, IndexError, KeyError, ValueError) as error:  # DecodeError is a ValueError
        raise BundleError(
            f"cannot read input {name!r} of {signature!r} in {path}: {error}"
        ) from error
    return [int(d.size) for d in spec.tensor_shape.dim]

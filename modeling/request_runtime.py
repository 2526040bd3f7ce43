"""A model function at the fixed shapes of one request, compiled once and called with numpy.

A request calls two models, each with one user: the user tower on a ``[1, L, d]`` history
(`retrieval.request`) and the ranker on ``N`` candidates (`ranking.request`). At that size a
TensorFlow call costs more in dispatch than in arithmetic: about 15 us of Python per input
tensor, about 3 us per captured variable, and a floor of about 0.15 ms for any call. Three
runtimes are offered (``serving.request_runtime``, `core.config.REQUEST_RUNTIMES`):

- ``"litert"`` (default): the concrete function converted to a LiteRT flatbuffer (builtin ops
  only, weights included) and run by the LiteRT interpreter, whose call costs microseconds and
  whose kernels use the CPU's AVX2/FMA. On the 1M-video bundle: tower 0.18 ms against 0.64 ms
  under XLA, ranker 0.49 ms against 1.29 ms, same outputs to 1e-5. Conversion takes about
  20 s at a million videos (the ranker's id table is copied into the flatbuffer), so the jobs
  that write a bundle convert once (`write_converted`) and keep the flatbuffer beside its
  SavedModel, checksummed like every bundle file. A server maps that file (every worker reads
  the same pages) when its recorded shape is the request's; otherwise (an older bundle, a
  server configured for other shapes) it converts at load, in a child process: conversion
  holds the GIL for seconds at a time, which would stall the requests a server is answering
  while a new bundle loads aside. The child (`modeling.child_process.ChildProcess`) dies with
  the server, however the server ends.
- ``"xla"``: the concrete function compiled with XLA.
- ``"graph"``: the plain concrete function.

Each model defines its request function with a *builder*: a module-level function
``(model function, *shape) -> (function with named outputs, input signature)``. A conversion
child rebuilds the function from the SavedModel with the same builder, which crosses the pipe
by its module and name.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from core.config import REQUEST_RUNTIMES
from core.errors import BundleError
from core.io import atomic_write_bytes, atomic_write_json
from modeling.child_process import ChildProcess

logger = logging.getLogger(__name__)

Runner = Callable[..., dict[str, np.ndarray]]
"""``(*numpy arrays in signature order) -> {output name: numpy array}``."""

Signature = list[tf.TensorSpec]

Builder = Callable[..., tuple[Callable[..., dict[str, tf.Tensor]], Signature]]
"""``(model function, *shape) -> (request function, its input signature)``; module-level."""

# Beside a SavedModel directory, the LiteRT conversions of its functions.
CONVERTED_DIR = "request"


def _converted_files(saved_model_dir: Path, attribute: str) -> tuple[Path, Path]:
    """``(flatbuffer, description)`` of ``attribute``'s stored conversion."""
    directory = Path(saved_model_dir).parent / CONVERTED_DIR
    return directory / f"{attribute}.tflite", directory / f"{attribute}.json"


def _description(builder: Builder, shape: tuple[int, ...]) -> dict[str, object]:
    return {"builder": f"{builder.__module__}.{builder.__qualname__}", "shape": list(shape)}


def write_converted(
    builder: Builder,
    attribute: str,
    saved_model_dir: Path,
    shape: tuple[int, ...],
    converter: ChildProcess,
) -> Path:
    """Converts a SavedModel's function at ``shape`` once and stores it beside the SavedModel
    (``../request/<attribute>.tflite`` and a description of its builder and shape), for
    `request_runner` to map instead of converting at every load.

    Args:
        builder: The request function's builder (see the module docstring).
        attribute: The model function's name on the SavedModel.
        saved_model_dir: The SavedModel, inside a staged bundle.
        shape: The builder's shape arguments the servers will ask for.
        converter: The conversion child (`conversion_process`).

    Returns:
        The flatbuffer's path.

    Raises:
        BundleError: LiteRT cannot convert the model.
    """
    started = time.perf_counter()
    try:
        flatbuffer = converter.call(
            convert_saved_model, builder, attribute, str(saved_model_dir), shape
        )
    except Exception as error:  # the converter raises several unrelated types
        raise BundleError(f"cannot convert {saved_model_dir} to LiteRT: {error}") from error
    model_path, description_path = _converted_files(saved_model_dir, attribute)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_path, flatbuffer)
    atomic_write_json(description_path, _description(builder, shape))
    logger.info(
        "converted %s to LiteRT in %.1f s (%.1f MB)",
        model_path.relative_to(Path(saved_model_dir).parent.parent),
        time.perf_counter() - started,
        len(flatbuffer) / 1e6,
    )
    return model_path


def _stored_description(saved_model_dir: Path, attribute: str) -> dict[str, object] | None:
    """What `write_converted` recorded for ``attribute`` (builder and shape), or None."""
    _, description_path = _converted_files(saved_model_dir, attribute)
    try:
        description = json.loads(description_path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return description if isinstance(description, dict) else None


def stored_shape(saved_model_dir: Path, attribute: str) -> tuple[int, ...] | None:
    """The shape ``attribute``'s stored conversion was made for, or None without one."""
    description = _stored_description(saved_model_dir, attribute)
    try:
        return tuple(int(n) for n in description["shape"])  # type: ignore[index, union-attr]
    except (KeyError, TypeError, ValueError):
        return None


def stored_conversion(
    saved_model_dir: Path | None, attribute: str, builder: Builder, shape: tuple[int, ...]
) -> Path | None:
    """The flatbuffer `write_converted` stored for exactly this builder and shape, if any."""
    if saved_model_dir is None:
        return None
    description = _stored_description(saved_model_dir, attribute)
    if description is None:
        return None
    model_path, _ = _converted_files(saved_model_dir, attribute)
    if description != _description(builder, shape) or not model_path.is_file():
        logger.info(
            "%s was converted for %s, not %s: converting again",
            model_path.name,
            description,
            _description(builder, shape),
        )
        return None
    return model_path


def _to_litert(function: Callable[..., object], signature: Signature, keepalive: object) -> bytes:
    concrete = tf.function(function, input_signature=signature).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keepalive)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def convert_saved_model(
    builder: Builder, attribute: str, directory: str, shape: tuple[int, ...]
) -> bytes:
    """LiteRT flatbuffer of ``builder``'s function over the SavedModel in ``directory``'s
    ``attribute`` (the body of the conversion child; public so that it pickles by name)."""
    loaded = tf.saved_model.load(directory)
    function, signature = builder(getattr(loaded, attribute), *shape)
    return _to_litert(function, signature, loaded)


def conversion_process() -> ChildProcess:
    """A child process for LiteRT conversions, started by ``with``; share one across a
    bundle's models (each child pays for importing TensorFlow). It dies with this process."""
    return ChildProcess("vidrec-litert-conversion")


def request_runner(
    what: str,
    builder: Builder,
    model_fn: Callable[..., object],
    attribute: str,
    shape: tuple[int, ...],
    runtime: str,
    keepalive: object = None,
    saved_model_dir: Path | None = None,
    converter: ChildProcess | None = None,
) -> Runner:
    """``builder(model_fn, *shape)`` compiled for ``runtime``, called with numpy arrays.

    Args:
        what: The model, for messages (``"user tower"``, ``"ranker"``).
        builder: Makes the request function and its signature (see the module docstring).
        model_fn: The model's function it wraps (in memory or from a loaded SavedModel).
        attribute: Name of ``model_fn`` on the SavedModel, for a conversion child.
        shape: The builder's shape arguments.
        runtime: One of `core.config.REQUEST_RUNTIMES`.
        keepalive: The object owning the function's variables (a loaded SavedModel), which
            LiteRT conversion reads them from.
        saved_model_dir: Where ``model_fn``'s SavedModel lies, if it was loaded from disk:
            LiteRT conversion then runs in a child process.
        converter: That child process (`conversion_process`), to share one across a bundle's
            models; by default one is started for this model.

    Raises:
        BundleError: An unknown runtime, or a model LiteRT cannot convert.
    """
    if runtime not in REQUEST_RUNTIMES:
        raise BundleError(
            f"request runtime must be one of {list(REQUEST_RUNTIMES)}, got {runtime!r}"
        )
    # Only builds the Python function: nothing is traced until a runtime asks for it.
    function, signature = builder(model_fn, *shape)
    if runtime != "litert":
        concrete = tf.function(
            function, input_signature=signature, jit_compile=runtime == "xla"
        ).get_concrete_function()

        def run_tensorflow(*arrays: np.ndarray) -> dict[str, np.ndarray]:
            out = concrete(*(tf.constant(a) for a in arrays))
            return {name: value.numpy() for name, value in out.items()}

        return run_tensorflow
    started = time.perf_counter()
    stored = stored_conversion(saved_model_dir, attribute, builder, shape)
    if stored is not None:
        # Mapped, not read: the workers of one server share the file's pages.
        interpreter = Interpreter(model_path=str(stored), num_threads=1)
        logger.info("%s: LiteRT model from the bundle (%s)", what, stored.name)
        return _litert_runner(interpreter, signature)
    try:
        if saved_model_dir is None:
            flatbuffer = _to_litert(function, signature, keepalive)
        else:
            arguments = (builder, attribute, str(saved_model_dir), shape)
            if converter is not None:
                flatbuffer = converter.call(convert_saved_model, *arguments)
            else:
                with conversion_process() as child:
                    flatbuffer = child.call(convert_saved_model, *arguments)
    except Exception as error:  # the converter raises several unrelated types
        raise BundleError(
            f"cannot convert the {what} to LiteRT ({error}); serve it with "
            'serving.request_runtime "xla" instead'
        ) from error
    logger.info(
        "%s converted to LiteRT in %.1f s (%.1f MB)",
        what,
        time.perf_counter() - started,
        len(flatbuffer) / 1e6,
    )
    return _litert_runner(Interpreter(model_content=flatbuffer, num_threads=1), signature)


def _litert_runner(interpreter: Interpreter, signature: Signature) -> Runner:
    runner = interpreter.get_signature_runner()
    # A signature runner reuses its buffers: one call at a time per runner.
    lock = threading.Lock()
    names = [spec.name for spec in signature]

    def run_litert(*arrays: np.ndarray) -> dict[str, np.ndarray]:
        with lock:
            return runner(**dict(zip(names, arrays, strict=True)))

    return run_litert

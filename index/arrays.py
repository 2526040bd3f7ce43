"""The arrays the index takes in: checks of vectors, ids and exclusion lists; unit-norm copies,
chunks and row samples.

Each check returns the array in the form the index works with (C-contiguous ``float32``
vectors, ``int64`` ids) or raises a `DataError` that names the argument and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from core.errors import DataError


def check_vectors(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous ``[n, d] float32`` array, or a `DataError` naming ``name``.

    Args:
        x: The caller's array.
        name: The argument's name, for the message.
        dim: The dimension ``d`` must equal, or ``None`` for any.
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name}: expected a numpy array [n, d] float32, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataError(
            f"{name}: expected shape [n, d], got {list(x.shape)} (use x[None, :] for one row)"
        )
    if x.dtype != np.float32:
        raise DataError(f"{name}: expected dtype float32, got {x.dtype} (use .astype(np.float32))")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name}: dimension {x.shape[1]} does not match the index dimension {dim}")
    if x.shape[1] == 0:
        raise DataError(f"{name}: dimension must be >= 1")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(
            f"{name}: {len(bad)} row(s) contain NaN or inf (first rows {bad[:5].tolist()})"
        )
    return np.ascontiguousarray(x)


def check_ids(ids: Any, n: int | None, name: str, *, unique: bool = True) -> np.ndarray:
    """``ids`` as C-contiguous ``[n] int64``: integers, non-negative, unique unless told otherwise.

    Args:
        ids: Video ids of any integer dtype.
        n: How many there must be (one per embedding row), or ``None`` for any number.
        name: The argument's name, for the message.
        unique: Refuse duplicates.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array of video ids, got shape {list(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer video ids, got dtype {arr.dtype}")
    if n is not None and len(arr) != n:
        raise DataError(f"{name}: {len(arr)} ids for {n} embeddings; they must match row for row")
    if arr.size and arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{name}: ids must fit in int64")
    out = arr.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise DataError(
            f"{name}: ids must be >= 0 (-1 marks an empty result slot), got {out.min()}"
        )
    if unique and out.size:
        values, counts = np.unique(out, return_counts=True)
        if (counts > 1).any():
            dupes = values[counts > 1]
            raise DataError(f"{name}: {len(dupes)} duplicate id(s), e.g. {dupes[:5].tolist()}")
    return np.ascontiguousarray(out)


def check_exclude(exclude: Any, nq: int) -> list[np.ndarray] | None:
    """One sorted ``[m_i] int64`` array of ids per query, or ``None`` when nothing is excluded.

    Args:
        exclude: ``None``, a sequence of ``nq`` id sequences, or an ``[nq, m]`` integer array.
        nq: Number of queries.
    """
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        exclude = list(exclude)
    if not isinstance(exclude, Sequence) or isinstance(exclude, str | bytes):
        raise DataError("exclude: expected one sequence of video ids per query")
    if len(exclude) != nq:
        raise DataError(f"exclude: {len(exclude)} lists for {nq} queries; give one per query")
    out = []
    for i, e in enumerate(exclude):
        arr = np.asarray(e if e is not None else [], dtype=None)
        if arr.size == 0:
            out.append(np.empty(0, dtype=np.int64))
            continue
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"exclude[{i}]: expected a 1-D list of integer video ids")
        out.append(np.sort(arr.astype(np.int64, copy=False)))
    return out if any(len(e) for e in out) else None


def normalized(x: np.ndarray, name: str) -> np.ndarray:
    """A unit-norm copy of ``x`` (``[n, d] float32``); zero rows are refused."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.einsum("ij,ij->i", out, out)
    if (norms <= 0).any():
        bad = np.flatnonzero(norms <= 0)
        raise DataError(
            f"{name}: {len(bad)} zero vector(s) cannot be normalised (rows {bad[:5].tolist()})"
        )
    faiss.normalize_L2(out)
    return out


def chunks(
    x: np.ndarray, ids: np.ndarray, batch: int, *, normalize: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(vectors [m, d] float32, ids [m] int64)`` pieces of at most ``batch`` rows.

    Chunking bounds the transient copy a normalisation makes of a large catalogue.

    Args:
        x: Checked embeddings ``[n, d] float32``.
        ids: Their ids ``[n] int64``.
        batch: Rows per chunk.
        normalize: Yield unit-norm copies (zero rows raise a `DataError` naming ``embeddings``).
    """
    for start in range(0, len(x), batch):
        piece = x[start : start + batch]
        piece = normalized(piece, "embeddings") if normalize else np.ascontiguousarray(piece)
        yield piece, ids[start : start + batch]


def sample_rows(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows of ``x`` (``[m, d]``) drawn without replacement, in their original order."""
    if len(x) <= n:
        return x
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=n, replace=False))
    return x[rows]

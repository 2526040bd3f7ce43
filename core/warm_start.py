"""Warm start: carry a trained model's weights into a model whose vocabularies grew.

A retrain adds rows to embedding tables (new videos, users, creators, categories) while every
other weight keeps its shape. `grow_weights` copies the previous values into the fresh model's
arrays: tensors of equal shape are copied whole; a table that grew along its first axis gets
its old rows copied and keeps the fresh initialisation for the new rows. Anything else means
the architecture changed, and warm starting would be wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from core.errors import DataError


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
    """What `grow_weights` did.

    Attributes:
        copied: Tensors copied whole.
        grown: Tensors whose first axis grew, with ``(old rows, new rows)``.
    """

    copied: int
    grown: dict[int, tuple[int, int]]

    def __str__(self) -> str:
        tables = ", ".join(f"{old}->{new} rows" for old, new in self.grown.values())
        return f"{self.copied} tensors copied, {len(self.grown)} tables grown ({tables or 'none'})"


def grow_weights(
    fresh: Sequence[np.ndarray], previous: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], WarmStartReport]:
    """Previous weights laid into freshly initialised ones (same model code, grown tables).

    Args:
        fresh: The new model's initial weights, in the model's weight order.
        previous: The trained model's weights, in the same order.

    Returns:
        ``(weights to set, report)``.

    Raises:
        DataError: Different numbers of tensors, a shape that is neither equal nor grown along
            the first axis, or a table that shrank.
    """
    if len(fresh) != len(previous):
        raise DataError(
            f"cannot warm start: the model has {len(fresh)} weight tensors, the previous one "
            f"{len(previous)} (the architecture changed; train from scratch)"
        )
    out, grown, copied = [], {}, 0
    for i, (new, old) in enumerate(zip(fresh, previous, strict=True)):
        if new.shape == old.shape:
            out.append(np.array(old, dtype=new.dtype, copy=True))
            copied += 1
        elif new.ndim >= 1 and new.shape[1:] == old.shape[1:] and new.shape[0] > old.shape[0]:
            merged = np.array(new, copy=True)
            merged[: old.shape[0]] = old
            out.append(merged)
            grown[i] = (int(old.shape[0]), int(new.shape[0]))
        else:
            raise DataError(
                f"cannot warm start: weight {i} has shape {new.shape}, previously {old.shape} "
                "(only tables may grow, along their first axis)"
            )
    return out, WarmStartReport(copied=copied, grown=grown)

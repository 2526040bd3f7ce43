"""PNG plots written next to the reports (matplotlib, no display needed)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from core.io import atomic_write_bytes


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def training_curves(
    path: str | os.PathLike[str],
    title: str,
    losses: Sequence[float],
    validation: Mapping[str, Sequence[float]],
    best_epoch: int | None = None,
) -> None:
    """Loss and validation metrics per epoch, side by side.

    Args:
        path: PNG to write.
        title: Figure title.
        losses: Training loss per epoch.
        validation: Metric name to its value per epoch.
        best_epoch: 1-based epoch whose weights were kept, marked on both panels.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = range(1, len(losses) + 1)
    left.plot(epochs, losses, marker="o", markersize=3)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    for name, values in sorted(validation.items()):
        right.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    if validation:
        right.legend(fontsize=8)
    if best_epoch:
        for axis in (left, right):
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(title)
    _save(figure, path)


def metric_comparison(
    path: str | os.PathLike[str], title: str, series: Mapping[str, Mapping[str, float]]
) -> None:
    """Grouped bars: one group per metric, one bar per series (e.g. new vs serving model)."""
    metrics = list(next(iter(series.values())).keys()) if series else []
    figure, axis = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        positions = [m + i * width for m in range(len(metrics))]
        axis.bar(positions, [values.get(m, 0.0) for m in metrics], width, label=name)
    axis.set_xticks([m + width * (len(series) - 1) / 2 for m in range(len(metrics))])
    axis.set_xticklabels(metrics)
    axis.legend(fontsize=8)
    axis.set_title(title)
    _save(figure, path)

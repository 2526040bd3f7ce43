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


def attention_heatmap(
    path: str | os.PathLike[str],
    title: str,
    weights: Sequence[Sequence[float]],
    history_labels: Sequence[str],
    item_labels: Sequence[str],
) -> None:
    """The ranker's target attention: one row per recommendation, one column per watch.

    Args:
        path: PNG to write.
        title: Figure title.
        weights: ``[items, history]`` attention weights (rows need not sum to 1: the ranker
            also attends to a "nothing relevant" slot, which is not shown).
        history_labels: Watched videos, oldest first.
        item_labels: Recommended videos, best first.
    """
    figure, axis = plt.subplots(
        figsize=(1.2 + 0.42 * len(history_labels), 1.2 + 0.38 * len(item_labels))
    )
    image = axis.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0)
    axis.set_xticks(range(len(history_labels)))
    axis.set_xticklabels(history_labels, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(item_labels)))
    axis.set_yticklabels(item_labels, fontsize=7)
    axis.set_xlabel("watch history (oldest → most recent)")
    figure.colorbar(image, ax=axis, fraction=0.03, label="attention")
    axis.set_title(title, fontsize=9)
    _save(figure, path)

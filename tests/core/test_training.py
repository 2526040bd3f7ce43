"""EarlyStopping: the best epoch, patience, and the same decisions on every worker."""

from core.training import EarlyStopping


def run(stopping, losses, recalls):
    """Feeds epochs until `record` says stop; returns the epochs trained."""
    for epoch, (loss, recall) in enumerate(zip(losses, recalls, strict=True), start=1):
        if not stopping.record(loss, {"recall@10": recall}, 1.0, lambda e=epoch: f"w{e}"):
            return epoch
    return len(losses)


def test_keeps_the_best_epoch_and_stops_after_patience():
    stopping = EarlyStopping("m", "recall@10", patience=2, max_epochs=10)
    assert run(stopping, [5, 4, 3, 2, 1], [0.1, 0.3, 0.2, 0.25, 0.5]) == 4
    assert stopping.history.best_epoch == 2 and stopping.best_snapshot == "w2"
    assert stopping.history.stop_reason == "no better val recall@10 for 2 epochs"


def test_workers_with_different_figures_take_the_chiefs_decisions():
    """A worker whose recalls differ in the last bits and whose clock differs from the chief's.

    Alone it would stop at once on its time budget and keep another epoch; with the chief's
    figures (what `pipelines.jobs.distribute.chief_consensus` broadcasts) it does what the chief
    does.
    """
    broadcast: list[list[float]] = []

    def chief_side(values):
        broadcast.append(list(values))
        return values

    def worker_side(values):
        return broadcast.pop(0)

    chief = EarlyStopping("m", "recall@10", 2, 10, max_seconds=100, consensus=chief_side)
    assert run(chief, [4, 3, 2, 1], [0.3, 0.3000001, 0.2, 0.1]) == 4
    alone = EarlyStopping("m", "recall@10", 2, 10, max_seconds=100)
    alone.started -= 1_000  # its clock: the budget is long gone
    assert run(alone, [4, 3, 2, 1], [0.3, 0.2999999, 0.4, 0.5]) == 1
    worker = EarlyStopping("m", "recall@10", 2, 10, max_seconds=100, consensus=worker_side)
    worker.started -= 1_000
    assert run(worker, [4, 3, 2, 1], [0.3, 0.2999999, 0.4, 0.5]) == 4
    assert worker.history.best_epoch == chief.history.best_epoch == 2
    assert worker.best_snapshot == "w2"
    assert [e.validation for e in worker.history.epochs] == [
        e.validation for e in chief.history.epochs
    ]
    assert (
        worker.history.stop_reason
        == chief.history.stop_reason
        == ("no better val recall@10 for 2 epochs")
    )

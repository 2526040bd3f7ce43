"""The request path's answers for a fixed set of requests, to show a change leaves them as
they were (docs/design.md §9).

``dump`` loads the published bundle under ``--artifacts`` (the one `benchmarks/serving.py`
builds) with a fresh event store, stores a few live events and takedowns (the same every run),
then answers ``--requests`` requests of several kinds: stored users with the default ``k``,
a larger ``k`` with exclusions, anonymous histories, and ``explain``. It writes every answer's
items (ids, scores, because, source, sources), attention and history source as JSON.
``compare`` says whether two dumps are identical, and where they first differ.

Run it from each checkout to compare (the code imported is the checkout's own):

    .venv/bin/python benchmarks/answers.py dump \
        --artifacts artifacts/bench/serving/platform-1000000/artifacts --out new.json
    .venv/bin/python benchmarks/answers.py compare old.json new.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

LIVE_USERS = 40
TAKEDOWNS = 20


def dump(args: argparse.Namespace) -> int:
    """Answers of the request path to a fixed set of requests, as JSON."""
    import candidates
    from core.config import ServingConfig
    from pipelines.serve import RecommenderService
    from pipelines.serving.events import EventStore
    from pipelines.serving.events.records import FeedbackEvent

    print(f"request path from {Path(candidates.__file__).parents[1]}", flush=True)
    events = EventStore(Path(tempfile.mkdtemp()) / "events.db")
    service = RecommenderService(
        Path(args.artifacts), events, ServingConfig(candidates=args.candidates)
    )
    service.reload()
    recommender = service.current
    state = recommender.state
    rng = np.random.default_rng(args.seed)
    lengths = np.diff(state.history_indptr)
    users = rng.choice(state.history_user_ids[lengths >= 5], args.requests, replace=False)
    video_ids = recommender.catalogue.ids(np.arange(2, recommender.catalogue.num_rows))
    now = float(state.data_until)
    # Live events after the bundle (out of time order for some users, so the store's order
    # matters) and takedowns of videos some answers would hold.
    live = []
    for i, user in enumerate(users[:LIVE_USERS]):
        watched = rng.choice(video_ids, 3, replace=False)
        stamps = now - np.array([30.0, 10.0, 20.0]) if i % 2 else now - np.array([30, 20, 10])
        live += [
            FeedbackEvent(int(user), int(v), int(t), "watch", float(s), None)
            for v, t, s in zip(watched, stamps, rng.uniform(5, 300, 3), strict=True)
        ]
    events.append(live)
    popular = recommender.recommend(user_id=int(users[-1]), k=TAKEDOWNS, now=now).items
    recommender.take_down([item["video_id"] for item in popular])
    answers = []
    for i, user in enumerate(users):
        kind = i % 4
        request: dict[str, object] = {"now": now}
        if kind == 0:
            request["user_id"] = int(user)
        elif kind == 1:
            request |= {
                "user_id": int(user),
                "k": 50,
                "exclude": rng.choice(video_ids, 5, replace=False).tolist(),
            }
        elif kind == 2:
            history, _, _ = state.history(int(user))
            request["history"] = [int(v) for v in history[-20:]] + [-5]
        else:
            request |= {"user_id": int(user), "k": 20, "explain": True}
        answer = recommender.recommend(**request)
        answers.append(
            {
                "request": request,
                "items": answer.items,
                "source": answer.source,
                "history_source": answer.history_source,
                "ignored_history": answer.ignored_history,
                "attention": answer.attention,
            }
        )
    Path(args.out).write_text(json.dumps(answers))
    print(f"wrote {len(answers)} answers to {args.out}")
    return 0


def compare(args: argparse.Namespace) -> int:
    """0 when both dumps hold the same answers, 1 (and the first difference) otherwise."""
    old = json.loads(Path(args.old).read_text())
    new = json.loads(Path(args.new).read_text())
    if len(old) != len(new):
        print(f"different numbers of answers: {len(old)} and {len(new)}")
        return 1
    items = sum(len(answer["items"]) for answer in old)
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a != b:
            for key in a:
                if a[key] != b.get(key):
                    print(f"answer {i} ({a['request']}) differs in {key!r}:")
                    print(f"  old {json.dumps(a[key])[:400]}\n  new {json.dumps(b[key])[:400]}")
                    break
            return 1
    print(f"identical: {len(old)} answers, {items} items (ids, scores, because, sources)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dumping = commands.add_parser("dump", help="answer a fixed set of requests")
    dumping.add_argument("--artifacts", required=True, help="bundle store with CURRENT")
    dumping.add_argument("--out", required=True)
    dumping.add_argument("--requests", type=int, default=400)
    dumping.add_argument("--candidates", type=int, default=300)
    dumping.add_argument("--seed", type=int, default=0)
    comparing = commands.add_parser("compare", help="are two dumps identical?")
    comparing.add_argument("old")
    comparing.add_argument("new")
    args = parser.parse_args()
    return dump(args) if args.command == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())

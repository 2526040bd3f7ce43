"""``vidrec bundles``: list, show, promote, roll back and prune the bundles of an artifacts root.

Reading commands (``list``, ``show``) take no lock. Commands that change what serves or what
exists (``promote``, ``rollback``, ``prune``) take the job lock of the root first, so they never
race a nightly retrain; when a job holds it they exit with `core.errors.EXIT_LOCKED`. They
refuse a root that does not exist instead of creating it (taking the lock would).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any

from core.bundle import (
    BundleStore,
    BundleSummary,
    flatten_metrics,
    read_manifest,
    report_summaries,
    verify_bundle,
)
from core.config import BundlesConfig
from core.errors import EXIT_OK, BundleError
from core.lock import JobLock
from pipelines.cli.config_file import load_config

logger = logging.getLogger(__name__)


def utc(timestamp: int | float | None) -> str:
    """``YYYY-MM-DD HH:MM`` in UTC, or ``-``."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M")


def format_bundle_table(summaries: list[BundleSummary]) -> str:
    """The ``vidrec bundles list`` table; ``*`` marks the serving bundle, ``^`` the one a
    rollback would publish."""
    header = ("", "BUNDLE", "CREATED (UTC)", "PARENT", "DATA WINDOW (UTC)", "KEY METRICS")
    rows = [header]
    for s in summaries:
        marker = "*" if s.serving else ("^" if s.previous else "")
        created = s.created_at.replace("T", " ")[:16] if s.created_at else "?"
        window = (
            f"{utc(s.first_timestamp)} .. {utc(s.last_timestamp)}"
            if s.first_timestamp is not None or s.last_timestamp is not None
            else "-"
        )
        metrics = (
            f"unreadable: {s.error}"
            if s.error
            else "  ".join(f"{k}={v:.4f}" for k, v in s.key_metrics.items()) or "-"
        )
        rows.append((marker, s.bundle_id, created, s.parent or "-", window, metrics))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def bundle_details(store: BundleStore, bundle_id: str, verify: bool = True) -> dict[str, Any]:
    """Everything ``vidrec bundles show`` prints, as a JSON-able dict.

    Raises:
        BundleError: Unknown id or unreadable manifest.
    """
    path = store.path(bundle_id)
    manifest = read_manifest(path)
    status = "not checked"
    if verify:
        try:
            verify_bundle(path)
            status = f"ok ({len(manifest.files)} files match their sha256)"
        except BundleError as error:
            status = f"FAILED: {error}"
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    history = [e.as_dict() for e in store.history() if bundle_id in (e.bundle_id, e.previous)]
    return {
        "bundle_id": manifest.bundle_id,
        "path": str(path),
        "serving": store.current_id() == bundle_id,
        "rollback_target": store.previous_id() == bundle_id,
        "created_at": manifest.created_at,
        "parent": manifest.parent,
        "schema_version": manifest.schema_version,
        "verification": status,
        "size_mb": round(size / 2**20, 2),
        "data": manifest.data,
        "embedding_dim": manifest.embedding_dim,
        "counts": manifest.counts,
        "metrics": flatten_metrics(manifest.metrics),
        "libraries": manifest.libraries,
        "reports": report_summaries(path),
        "publish_history": history,
    }


def format_details(details: dict[str, Any]) -> str:
    """Human-readable `bundle_details`."""
    data = details["data"]
    lines = [
        f"bundle      {details['bundle_id']}"
        + ("   [serving]" if details["serving"] else "")
        + ("   [rollback target]" if details["rollback_target"] else ""),
        f"path        {details['path']} ({details['size_mb']} MB)",
        f"created     {details['created_at']}",
        f"parent      {details['parent'] or '-'}",
        f"verified    {details['verification']}",
        f"data        {data.get('name', '?')}: {data.get('interactions', '?')} events, "
        f"{data.get('users', '?')} users, {data.get('videos', '?')} videos, "
        f"{utc(data.get('first_timestamp'))} .. "
        f"{utc(data.get('cutoff', data.get('last_timestamp')))} (UTC), split "
        f"{data.get('split', '?')}",
        f"dim         {details['embedding_dim']}",
        "counts      " + "  ".join(f"{k}={v}" for k, v in details["counts"].items()),
        "libraries   " + "  ".join(f"{k}={v}" for k, v in details["libraries"].items()),
        "metrics",
    ]
    lines += [f"  {k:<44} {v:.4f}" for k, v in details["metrics"].items()]
    lines.append("reports")
    for name, summary in details["reports"].items():
        lines.append(f"  {name}")
        lines += [f"    {k}: {v}" for k, v in summary.items()]
    lines.append("publish history")
    for event in details["publish_history"] or [{"time": "never published"}]:
        if "action" not in event:
            lines.append(f"  {event['time']}")
            continue
        lines.append(
            f"  {event['time']}  {event['action']:<8} {event['bundle_id']} "
            f"(was {event['previous'] or '-'})"
            + (f"  {event['reason']}" if event["reason"] else "")
        )
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    store = BundleStore(args.artifacts)
    summaries = store.summaries()
    if args.json:
        print(json.dumps([s.as_dict() for s in summaries], indent=2))
        return EXIT_OK
    if not summaries:
        print(f"no bundles under {store.bundles_dir}")
        return EXIT_OK
    print(format_bundle_table(summaries))
    print("* serving (CURRENT)   ^ what `vidrec bundles rollback` would publish")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    store = BundleStore(args.artifacts)
    bundle_id = args.bundle_id or store.current_id()
    if bundle_id is None:
        raise BundleError(f"nothing is serving under {args.artifacts}; pass a bundle id")
    details = bundle_details(store, bundle_id, verify=not args.no_verify)
    print(json.dumps(details, indent=2, default=str) if args.json else format_details(details))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    store = BundleStore(args.artifacts)
    store.require_root()
    with JobLock(args.artifacts, command=f"vidrec bundles promote {args.bundle_id}"):
        previous = store.current_id()
        store.promote(args.bundle_id, reason=args.reason)
    print(f"promoted {args.bundle_id} (verified); it serves now, replacing {previous or '-'}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    store = BundleStore(args.artifacts)
    store.require_root()
    with JobLock(args.artifacts, command="vidrec bundles rollback"):
        old, new = store.rollback(reason=args.reason)
        further = store.previous_id()
    print(f"rolled back from {old} to {new}; {new} serves now")
    print(
        f"a further rollback would publish {further}"
        if further
        else "this is the start of the publish history: a further rollback will refuse"
    )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    config = load_config(args.config, {}).bundles if args.config else BundlesConfig()
    if args.keep is not None:
        config = BundlesConfig(keep_last=args.keep)
    store = BundleStore(args.artifacts)
    store.require_root()
    with JobLock(args.artifacts, command="vidrec bundles prune") as lock:
        started = lock.info.started if lock.info else None
        result = store.apply_retention(config.keep_last, running_since=started)
    for bundle_id in result.removed:
        print(f"removed {bundle_id}")
    for name in result.swept:
        print(f"swept {name}")
    for bundle_id, why in result.kept.items():
        print(f"kept    {bundle_id}  ({why})")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``vidrec bundles ...`` to the CLI's sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifacts", default="artifacts", help="bundle store root")

    bundles = commands.add_parser("bundles", help="list, show, promote, roll back, prune bundles")
    actions = bundles.add_subparsers(dest="bundles_command", required=True)

    listing = actions.add_parser("list", parents=[common], help="all bundles, oldest first")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", parents=[common], help="one bundle's manifest and reports")
    show.add_argument("bundle_id", nargs="?", help="bundle id (default: the serving one)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    show.set_defaults(handler=cmd_show)

    promote = actions.add_parser(
        "promote", parents=[common], help="verify a bundle, then make it the serving one"
    )
    promote.add_argument("bundle_id")
    promote.add_argument("--reason", default="", help="recorded in PUBLISHED")
    promote.set_defaults(handler=cmd_promote)

    rollback = actions.add_parser(
        "rollback",
        parents=[common],
        help="serve the bundle that served before the current one (again: further back)",
    )
    rollback.add_argument("--reason", default="", help="recorded in PUBLISHED")
    rollback.set_defaults(handler=cmd_rollback)

    prune = actions.add_parser(
        "prune",
        parents=[common],
        help="keep the newest N bundles plus serving, parent, rollback target; sweep leftovers",
    )
    prune.add_argument("--keep", type=int, help="bundles.keep_last (default 5)")
    prune.add_argument("--config", help="JSON file with a bundles section")
    prune.set_defaults(handler=cmd_prune)

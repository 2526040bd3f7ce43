"""Lifecycle of the server and the bundle store (issue 11), through real processes and HTTP.

- Processes die with the server: SIGTERM at five points of a bundle load, each against a real
  ``python -m pipelines.cli serve``; afterwards no process of that server may be left. The
  server's processes are found by an environment variable only this test's server carries (a
  spawned child inherits it, and keeps it when re-parented to init), so nothing escapes.
- A bundle copied under a new id is refused (promote, and a server polling ``CURRENT``), and
  a refused bundle is not reloaded every poll.
- Bad bytes in store and bundle files give one line and exit code 2, never a traceback.
- ``serve`` on a busy port, and ``serve`` / ``bundles`` on a missing artifacts root.

Each server start costs about 10-20 s on 2 cores (TensorFlow imported twice: by the server and
by its model conversion child), so the default run covers the two most telling SIGTERM points
(during the start-up conversion, and during a hot swap's conversion); ``-m slow`` runs all five.
"""

import contextlib
import json
import operator
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.bundle import MANIFEST, BundleStore, read_manifest
from core.errors import EXIT_FAILED, EXIT_OK, BundleError, ConfigError
from modeling.child_process import ChildCallError, ChildProcess
from pipelines.cli.main import _run_server, main
from tests.tiny import tiny_config

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the server's processes"
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MARK_ENV = "VIDREC_LIFECYCLE_TEST"
POLL_SECONDS = 0.2
EXIT_SECONDS = 15.0  # SIGTERM -> process gone (measured 0.02-1.4 s)
LEFTOVER_SECONDS = 5.0  # process gone -> its children gone (PDEATHSIG: at once)
START_SECONDS = 240.0


@pytest.fixture()
def store(serving_platform, tmp_path) -> BundleStore:
    """A private copy of the session's tiny trained store (`tests/pipelines/conftest.py`):
    these tests damage, copy and republish bundles. ``vidrec serve`` reads its serving
    settings from ``--config`` (LiteRT by default), not from the bundle's ``config.json``."""
    _, _, root, bundle_id = serving_platform
    shutil.copytree(root / "artifacts", tmp_path / "artifacts")
    store = BundleStore(tmp_path / "artifacts")
    assert store.current_id() == bundle_id
    return store


def copy_bundle(store: BundleStore, bundle_id: str, new_id: str, *, rename: bool) -> Path:
    """``cp -r bundles/<bundle_id> bundles/<new_id>``; with ``rename`` the manifest is given
    the new id as well (a valid second bundle, as a retrain would publish)."""
    target = shutil.copytree(store.path(bundle_id), store.bundles_dir / new_id)
    if rename:
        manifest = json.loads((target / MANIFEST).read_text())
        manifest["bundle_id"] = new_id
        manifest["parent"] = bundle_id
        (target / MANIFEST).write_text(json.dumps(manifest))
    return target


# -- processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, state)`` of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0]


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes (zombies excluded) whose environment carries ``MARK_ENV=marker``, with
    their command lines."""
    wanted = f"{MARK_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if wanted in environ.split(b"\0"):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _wait(condition, seconds: float, what: str, server: "Server | None" = None) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if server is not None and server.process.poll() is not None:
            pytest.fail(f"server exited ({server.process.returncode}) waiting for {what}:\n"
                        + server.log()[-3000:])  # fmt: skip
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")


class Server:
    """A real ``vidrec serve`` process on a free loopback port, logging to a file."""

    def __init__(self, store: BundleStore, tmp_path: Path, *extra: str) -> None:
        self.store = store
        self.port = _free_port()
        self.marker = uuid.uuid4().hex
        self.log_path = tmp_path / "server.log"
        config = tmp_path / "serve.json"
        config.write_text(json.dumps({"serving": {"reload_poll_seconds": POLL_SECONDS}}))
        command = [
            sys.executable, "-m", "pipelines.cli", "serve",
            "--artifacts", str(store.root), "--events", str(tmp_path / "events.db"),
            "--config", str(config), "--port", str(self.port), *extra,
        ]  # fmt: skip
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**os.environ, MARK_ENV: self.marker},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (OSError, urllib.error.HTTPError, ValueError):
            return None

    def wait_ready(self) -> dict[str, Any]:
        return _wait(lambda: self.readyz(), START_SECONDS, "/readyz", self)

    def conversion_child(self) -> int | None:
        """Pid of the server's model conversion process, if one runs (a spawned child; the
        other spawned child, multiprocessing's resource tracker, lives as long as the
        server)."""
        for pid, command in marked_processes(self.marker).items():
            stat = _stat(pid)
            if stat and stat[0] == self.process.pid and "spawn_main" in command:
                return pid
        return None

    def sigterm(self) -> tuple[int, float, dict[int, str]]:
        """SIGTERM; returns the exit status, the seconds it took to exit and what of the
        server was still running ``LEFTOVER_SECONDS`` later (empty is right)."""
        self.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            status = self.process.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within {EXIT_SECONDS} s of SIGTERM")
        took = time.monotonic() - sent
        deadline = time.monotonic() + LEFTOVER_SECONDS
        left = marked_processes(self.marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = marked_processes(self.marker)
        return status, took, left

    def stop(self) -> None:
        """Clean-up whatever happened: kill the server and anything of it still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in marked_processes(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture()
def server_factory(store, tmp_path):
    started: list[Server] = []

    def start(*extra: str) -> Server:
        server = Server(store, tmp_path, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# What `vidrec serve` (one worker) ends with after SIGTERM at each point, and why:
# - while loading (start-up): killed by SIGTERM. Nothing serves yet and SIGTERM keeps its
#   default action, so the process ends at once; its conversion child gets SIGKILL from the
#   kernel (PR_SET_PDEATHSIG).
# - once uvicorn serves (idle, or during a hot swap in the poll thread): uvicorn shuts down
#   gracefully, then `vidrec serve` exits 0; a load in progress is abandoned (its conversion
#   process killed), not waited for.
KILLED_BY_SIGTERM = -signal.SIGTERM


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("importing", marks=pytest.mark.slow),
        "converting",
        pytest.param("ready", marks=pytest.mark.slow),
    ],
)
def test_sigterm_while_the_server_starts_leaves_no_process(server_factory, point):
    server = server_factory()
    if point == "importing":
        time.sleep(1.0)  # TensorFlow alone takes longer to import: no bundle is loading yet
        assert server.conversion_child() is None
    elif point == "converting":
        _wait(server.conversion_child, START_SECONDS, "the conversion process", server)
    else:
        assert server.wait_ready()["status"] == "ready"
        assert server.conversion_child() is None
    running = marked_processes(server.marker)
    status, took, left = server.sigterm()
    assert left == {}, f"left behind after SIGTERM {point}: {left}"
    assert status == (EXIT_OK if point == "ready" else KILLED_BY_SIGTERM), server.log()[-3000:]
    assert took < EXIT_SECONDS
    if point == "converting":
        assert len(running) == 3  # the server, its conversion child, the resource tracker


@pytest.mark.parametrize(
    "point", ["converting", pytest.param("warming up", marks=pytest.mark.slow)]
)
def test_a_copied_bundle_is_refused_once_and_sigterm_during_a_hot_swap_leaves_no_process(
    server_factory, store, point
):
    serving = store.current_id()
    server = server_factory()
    assert server.wait_ready()["bundle_id"] == serving

    # A bundle copied under a new id: refused once, never loaded again while CURRENT names it.
    copied = serving[:-6] + "c0ffee"
    copy_bundle(store, serving, copied, rename=False)
    (store.root / "CURRENT").write_text(copied + "\n")
    refused = _wait(
        lambda: (r := server.readyz()) and r["last_refused"] and r, 60, "the refusal", server
    )
    assert refused["bundle_id"] == serving
    message = f"bundle directory {copied} holds the manifest of bundle {serving}"
    assert message in refused["last_refused"]
    time.sleep(10 * POLL_SECONDS)
    assert server.log().count(f"refused bundle {copied}:") == 1
    assert server.readyz()["bundle_id"] == serving

    # A valid new bundle: the server converts it in a child process; SIGTERM then.
    fresh = serving[:-6] + "f7e5a1"
    copy_bundle(store, serving, fresh, rename=True)
    (store.root / "CURRENT").write_text(fresh + "\n")
    child = _wait(server.conversion_child, 60, "the swap's conversion process", server)
    if point == "warming up":  # the child is closed once both models are converted
        _wait(lambda: server.conversion_child() != child, 60, "the end of the conversion")
    status, took, left = server.sigterm()
    assert left == {}, f"left behind after SIGTERM {point}: {left}"
    assert status == EXIT_OK, server.log()[-3000:]
    assert took < EXIT_SECONDS
    if point == "converting":  # abandoned, not waited for (it takes ~8 s; shutdown ~1 s)
        assert "shutting down: stopped 1 model conversion process(es)" in server.log()


@pytest.mark.slow
def test_sigterm_while_two_workers_load_leaves_no_process(server_factory):
    server = server_factory("--workers", "2")

    def converting_workers() -> int:
        # Conversion processes are the workers' children, the server's grandchildren.
        processes = marked_processes(server.marker)
        workers = {pid for pid in processes if (_stat(pid) or (0,))[0] == server.process.pid}
        return sum(
            1
            for pid, command in processes.items()
            if "spawn_main" in command and (_stat(pid) or (0,))[0] in workers
        )

    _wait(lambda: converting_workers() == 2, START_SECONDS, "both workers converting", server)
    status, took, left = server.sigterm()
    assert left == {}, f"left behind: {left}"
    # The supervisor stops its workers (they die at once while loading) and exits normally.
    assert status == EXIT_OK, server.log()[-3000:]
    assert took < EXIT_SECONDS


@pytest.mark.slow
def test_a_worker_that_cannot_load_stops_serve_with_exit_2(server_factory, store):
    serving = store.current_id()
    copied = serving[:-6] + "c0ffee"
    copy_bundle(store, serving, copied, rename=False)
    (store.root / "CURRENT").write_text(copied + "\n")
    server = server_factory("--workers", "2")
    try:
        status = server.process.wait(START_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail("serve --workers 2 kept running with a bundle no worker can load")
    assert status == EXIT_FAILED
    last = server.log().splitlines()[-1]
    assert re.fullmatch(
        r"vidrec serve: error: the HTTP server could not start: worker process \d+ could not "
        r"start; the reason is in the log above",
        last,
    ), last
    assert f"cannot serve: bundle directory {copied} holds the manifest" in server.log()
    _wait(lambda: not marked_processes(server.marker), LEFTOVER_SECONDS, "no process left")


def test_serve_on_a_busy_port_exits_2_before_loading(store, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "serve", "--artifacts", str(store.root),
             "--events", str(tmp_path / "events.db"), "--port", str(port)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == EXIT_FAILED
    assert result.stderr.splitlines() == [
        f"vidrec serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "stop the other server or pass --port"
    ]
    assert result.stdout == ""
    assert took < 10.0  # a bundle load takes 10-20 s here; measured 0.8 s
    assert not (tmp_path / "events.db").exists()


def test_a_uvicorn_startup_failure_is_exit_2_not_3():
    class Failing:
        started = False

        def run(self, sockets: list[socket.socket]) -> None:
            sys.exit(3)  # what uvicorn does when, e.g., the app's lifespan start-up fails

    with (
        socket.socket() as listener,
        pytest.raises(
            ConfigError,
            match=r"^the HTTP server could not start: uvicorn exited with status 3; the reason is "
            r"in the log above$",
        ),
    ):
        _run_server(Failing(), listener)


# -- a bundle copied under another id -------------------------------------------------------


def test_promote_refuses_a_bundle_copied_under_another_id(store, capsys):
    serving = store.current_id()
    copied = serving[:-6] + "c0ffee"
    copy_bundle(store, serving, copied, rename=False)
    assert main(["bundles", "promote", copied, "--artifacts", str(store.root)]) == EXIT_FAILED
    assert capsys.readouterr().err == (
        f"vidrec bundles: error: bundle directory {copied} holds the manifest of bundle "
        f"{serving} (copied or renamed by hand?); a bundle is valid only under its own id: "
        f"rename the directory back to {serving}, or delete it if {serving} is still there\n"
    )
    assert store.current_id() == serving
    # `list` still shows it, with the reason it cannot be used.
    assert main(["bundles", "list", "--artifacts", str(store.root)]) == EXIT_OK
    row = next(line for line in capsys.readouterr().out.splitlines() if copied in line)
    assert row.endswith(f"unreadable: bundle directory {copied} holds the manifest of bundle "
                        f"{serving} (copied or renamed by hand?); a bundle is valid only under "
                        f"its own id: rename the directory back to {serving}, or delete it if "
                        f"{serving} is still there")  # fmt: skip


def test_manifest_ids_are_checked_against_their_directory_names(store, tmp_path):
    serving = store.current_id()
    other = serving[:-6] + "0b0b0b"
    # Staged under .tmp-<its id>: fine; under another id's name, staged or not: refused.
    staged = shutil.copytree(store.path(serving), store.bundles_dir / f".tmp-{serving}")
    assert read_manifest(staged).bundle_id == serving
    for name in (f".tmp-{other}", other):
        moved = shutil.copytree(store.path(serving), store.bundles_dir / name)
        with pytest.raises(BundleError, match=rf"^bundle directory {name} holds the manifest of "
                           rf"bundle {serving} \(copied"):  # fmt: skip
            read_manifest(moved)
    # A copy under a name that is no bundle id (for `vidrec evaluate --bundle DIR`) is fine.
    assert read_manifest(shutil.copytree(store.path(serving), tmp_path / "kept")).bundle_id == (
        serving
    )


def test_poll_does_not_reload_a_refused_bundle_until_current_or_its_manifest_changes(
    store, monkeypatch, caplog
):
    from pipelines.serve import Recommender, RecommenderService
    from pipelines.serving.events import EventStore

    serving = store.current_id()
    first, second = serving[:-6] + "aaaaa1", serving[:-6] + "aaaaa2"
    copy_bundle(store, serving, first, rename=False)
    copy_bundle(store, serving, second, rename=False)
    loads: list[str] = []
    real = Recommender.from_bundle.__func__

    def counted(cls, bundle_dir, events, config):
        loads.append(Path(bundle_dir).name)
        return real(cls, bundle_dir, events, config)

    monkeypatch.setattr(Recommender, "from_bundle", classmethod(counted))
    service = RecommenderService(
        store.root, EventStore(store.root / "events.db"), tiny_config().serving
    )

    def poll(times: int = 3) -> None:
        for _ in range(times):
            service.poll()

    current = store.root / "CURRENT"
    current.write_text(first + "\n")
    poll()
    assert loads == [first]
    assert service.last_error.startswith(f"bundle directory {first} holds the manifest")
    # Its manifest rewritten (same content, new mtime): tried again, once.
    manifest = store.bundles_dir / first / MANIFEST
    manifest.write_bytes(manifest.read_bytes())
    poll()
    assert loads == [first, first]
    # CURRENT names another bundle, then the first again: each tried once.
    current.write_text(second + "\n")
    poll()
    current.write_text(first + "\n")
    poll()
    assert loads == [first, first, second, first]
    assert [
        r.getMessage().split(":")[0] for r in caplog.records if "refused" in r.getMessage()
    ] == [f"refused bundle {b}" for b in loads]
    # An explicit reload (POST /admin/reload) always tries.
    with pytest.raises(BundleError, match=f"bundle directory {first} holds"):
        service.reload()
    assert loads == [first, first, second, first, first]
    assert not service.ready


# -- bad bytes ------------------------------------------------------------------------------

BAD = b"\xff\xfe"
NOT_UTF8 = "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"


@pytest.fixture()
def two_bundles(store) -> tuple[BundleStore, str, str]:
    """The store with a second, valid bundle that is not serving."""
    serving = store.current_id()
    other = serving[:-6] + "0b0b0b"
    copy_bundle(store, serving, other, rename=True)
    return store, serving, other


def _cases() -> list[Any]:
    """(file to damage, command, exit code, stderr) with {a} serving and {b} not."""
    manifest = "bundles/{b}/manifest.json"
    manifest_error = (
        "cannot read {root}/bundles/{b}/manifest.json: " + NOT_UTF8 + "; the bundle is damaged: "
        "restore it or build a new one"
    )
    current_error = (
        "cannot read {root}/CURRENT: " + NOT_UTF8 + "; it must hold the id of the serving "
        "bundle: write one by hand (the bundles are the directories in {root}/bundles)"
    )
    published_error = (
        "{root}/PUBLISHED line 1 is not UTF-8 text (invalid start byte at byte 0); vidrec "
        "writes only ASCII there, so the file was damaged or edited: fix or delete that line "
        "by hand"
    )
    return [
        # `list` shows a damaged bundle on its row (that is how to find it) and exits 0.
        (manifest, ["list"], EXIT_OK, ""),
        (manifest, ["show", "{b}"], EXIT_FAILED, manifest_error),
        (manifest, ["promote", "{b}"], EXIT_FAILED, manifest_error),
        ("CURRENT", ["list"], EXIT_FAILED, current_error),
        ("CURRENT", ["show"], EXIT_FAILED, current_error),
        ("CURRENT", ["promote", "{b}"], EXIT_FAILED, current_error),
        ("PUBLISHED", ["list"], EXIT_FAILED, published_error),
        ("PUBLISHED", ["show", "{a}"], EXIT_FAILED, published_error),
        ("PUBLISHED", ["rollback"], EXIT_FAILED, published_error),
        ("PUBLISHED", ["prune"], EXIT_FAILED, published_error),
        # Promote does not read the history; it appends to it: an operator can still act.
        ("PUBLISHED", ["promote", "{b}"], EXIT_OK, ""),
    ]


@pytest.mark.parametrize(("damaged", "command", "code", "error"), _cases())
def test_bad_bytes_in_store_files_are_one_line_and_exit_2(
    two_bundles, capsys, damaged, command, code, error
):
    store, a, b = two_bundles
    names = {"a": a, "b": b, "root": store.root}
    (store.root / damaged.format(**names)).write_bytes(BAD)
    argv = ["bundles", *(part.format(**names) for part in command), "--artifacts", str(store.root)]
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err == (f"vidrec bundles: error: {error.format(**names)}\n" if error else "")
    if damaged.endswith(MANIFEST) and command == ["list"]:
        row = next(line for line in captured.out.splitlines() if b in line)
        assert row.endswith(f"unreadable: {manifest_error_for(store, b)}")


def manifest_error_for(store: BundleStore, bundle_id: str) -> str:
    return (
        f"cannot read {store.bundles_dir / bundle_id / MANIFEST}: {NOT_UTF8}; the bundle is "
        "damaged: restore it or build a new one"
    )


def test_bad_bytes_are_one_line_on_stderr_of_a_real_process(two_bundles):
    store, _, b = two_bundles
    (store.bundles_dir / b / MANIFEST).write_bytes(BAD + b'{"bundle_id": 1}')
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bundles", "show", b, "--artifacts",
         str(store.root)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED
    assert result.stderr == f"vidrec bundles: error: {manifest_error_for(store, b)}\n"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("files", 3, r"manifest field 'files' must be an object, got int 3$"),
        (
            "embedding_dim",
            "16",
            r"manifest field 'embedding_dim' must be an integer, got str '16'$",
        ),
        ("schema_version", True, r"manifest field 'schema_version' must be an integer, got bool"),
        ("parent", 7, r"manifest field 'parent' must be a string or null, got int 7$"),
        ("bundle_id", "latest", r"manifest field 'bundle_id' 'latest' is not a bundle id"),
        ("files", {"model.bin": 5}, r"manifest field 'files': the sha256 of \['model.bin'\] is"),
    ],
)
def test_a_manifest_with_fields_of_the_wrong_type_is_a_bundle_error(
    two_bundles, capsys, field, value, message
):
    store, _, b = two_bundles
    path = store.bundles_dir / b / MANIFEST
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"^{path}: {message}"):
        read_manifest(path.parent)
    assert main(["bundles", "promote", b, "--artifacts", str(store.root)]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith(f"vidrec bundles: error: {path}: manifest field")
    path.write_text("[1, 2]")
    with pytest.raises(BundleError, match=rf"^{path}: manifest is a JSON list, not an object$"):
        read_manifest(path.parent)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("config.json", r"^cannot read .*config\.json: 'utf-8' codec can't decode"),
        ("vocab/feature_space.json", r"^cannot read the feature space in .*: 'utf-8' codec"),
        ("serving/state.json", r"^cannot read the serving state in .*: 'utf-8' codec"),
        ("index/index_meta.json", r"index_meta\.json: corrupted, not valid JSON \('utf-8' codec"),
    ],
)
def test_bad_bytes_in_bundle_files_are_bundle_errors(store, relative, message):
    from core.features import FeatureSpace
    from index import VideoIndex
    from pipelines.artifacts import read_config
    from pipelines.serving.state import ServingState

    bundle = store.path(store.current_id())
    (bundle / relative).write_bytes(BAD)
    load = {
        "config.json": lambda: read_config(bundle),
        "vocab/feature_space.json": lambda: FeatureSpace.load(bundle / "vocab"),
        "serving/state.json": lambda: ServingState.load(bundle / "serving"),
        "index/index_meta.json": lambda: VideoIndex.load(bundle / "index"),
    }[relative]
    with pytest.raises(BundleError, match=message):
        load()


def test_bad_bytes_in_a_config_file_are_a_config_error(store, tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_bytes(BAD)
    argv = ["bundles", "prune", "--config", str(config), "--artifacts", str(store.root)]
    assert main(argv) == EXIT_FAILED
    assert capsys.readouterr().err == f"vidrec bundles: error: --config {config}: {NOT_UTF8}\n"


def test_bad_bytes_in_the_lock_file_do_not_matter(two_bundles, capsys):
    store, _, b = two_bundles
    (store.root / "LOCK").write_bytes(BAD)  # it only says who held the lock last
    assert main(["bundles", "promote", b, "--artifacts", str(store.root)]) == EXIT_OK
    assert store.current_id() == b


# -- a missing artifacts root ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["bundles", "promote", "20260101T000000Z-abcdef"],
        ["bundles", "rollback"],
        ["bundles", "prune"],
    ],
)
def test_a_missing_artifacts_root_is_refused_and_not_created(tmp_path, capsys, command):
    root = tmp_path / "missing"
    assert main([*command, "--artifacts", str(root)]) == EXIT_FAILED
    assert capsys.readouterr().err == (
        f"vidrec {command[0]}: error: artifacts directory {root} does not exist; run `vidrec "
        "train` to create one, or pass --artifacts with the directory your bundles are in\n"
    )
    assert not root.exists()


# -- the child process ----------------------------------------------------------------------


def test_child_process_calls_and_errors():
    with ChildProcess("test-child") as child:
        assert child.call(operator.add, 2, 3) == 5
        assert child.call(os.getppid) == os.getpid()
        with pytest.raises(ChildCallError, match=r"^division by zero$") as caught:
            child.call(operator.truediv, 1, 0)
        assert caught.value.kind == "ZeroDivisionError"
        assert child.call(operator.mul, 6, 7) == 42  # it goes on after an error
        pid = child.pid
    assert _stat(pid) is None  # killed and reaped on leaving the block


def test_a_killed_child_leaves_no_temporary_files():
    # TensorFlow's autograph writes a file per converted function with mkstemp's kind of call
    # and removes it only at a normal exit, which a killed child never reaches.
    with ChildProcess("test-child") as child:
        scratch = child.call(tempfile.gettempdir)
        _, written = child.call(tempfile.mkstemp)
        assert Path(written).parent == Path(scratch)
        assert Path(scratch).parent == Path(tempfile.gettempdir())  # not the parent's own
        assert Path(scratch).name.startswith("test-child-")
        assert child.call(os.getenv, "TMPDIR") == scratch  # for the child's own children
        assert Path(written).is_file()
    assert not Path(scratch).exists()


def test_closing_a_child_from_another_thread_ends_a_call_in_progress():
    with ChildProcess("test-child") as child:
        threading.Timer(0.5, child.close).start()
        started = time.monotonic()
        with pytest.raises(ChildCallError, match=r"\(pid \d+\) was killed by SIGKILL before"):
            child.call(time.sleep, 60)
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["prctl", "watchdog only"])
def test_a_child_dies_when_its_parent_is_killed(tmp_path, pdeathsig):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, time
            from modeling.child_process import ChildProcess
            child = ChildProcess("orphan-test", pdeathsig={pdeathsig})
            child.start()
            assert child.call(os.getpid) == child.pid
            print(child.pid, flush=True)
            time.sleep(600)
        """)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        child = int(parent.stdout.readline())
        assert _stat(child)[0] == parent.pid
        parent.kill()
        parent.wait()
        _wait(lambda: _stat(child) is None, 5.0, f"child {child} to die with its parent")
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError, TypeError, ValueError):
            os.kill(child, signal.SIGKILL)


def test_a_model_that_cannot_be_converted_is_a_bundle_error(tmp_path):
    from retrieval.request import RequestQuery

    # The parent never traces the function when a child converts: no tower needed.
    with pytest.raises(
        BundleError,
        match=r"^cannot convert the user tower to LiteRT \(.+\); serve it with "
        r'serving.request_runtime "xla" instead$',
    ):
        RequestQuery(None, 10, 16, 2, "litert", saved_model_dir=tmp_path / "missing")

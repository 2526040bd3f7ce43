"""Connection balancing between the workers of ``vidrec serve --workers N``
(`pipelines.serving.balance`); the two-worker server test in test_serve.py checks it end to
end."""

import array
import asyncio
import os
import subprocess
import sys

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from pipelines.serving import balance
from pipelines.serving.balance import (
    SHARES_ENV,
    BalancedHttpToolsProtocol,
    ConnectionShares,
    create_shares_file,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_worker_over_its_share_of_the_connections_says_so(tmp_path):
    path = create_shares_file(tmp_path / "shares", workers=2)
    mine = ConnectionShares(path)
    other = ConnectionShares(path, pid=os.getppid())
    assert (mine.workers, mine.slots) == (2, 8)
    mine.add(3)
    other.add(1)
    assert mine.over_share() and not other.over_share()  # 3 > ceil(4 / 2)
    mine.add(-1)
    other.add(1)
    assert not mine.over_share() and not other.over_share()  # 2 / 2
    mine.add(1)
    assert not mine.over_share()  # 3 of 5: ceil(5 / 2) is 3
    other.add(-2)
    assert mine.over_share() and mine.held == 3  # 3 of 3: ceil(3 / 2) is 2


def test_a_dead_workers_slot_is_taken_over(tmp_path):
    path = create_shares_file(tmp_path / "shares", workers=2)
    dead = ConnectionShares(path, pid=_dead_pid())
    dead.add(5)
    replacement = ConnectionShares(path)
    assert replacement.held == 0 and replacement._slot == dead._slot
    assert not replacement.over_share()


def test_a_file_whose_slots_are_all_held_is_refused(tmp_path):
    path = create_shares_file(tmp_path / "shares", workers=2)
    fields = array.array("q", path.read_bytes())
    fields[1::2] = array.array("q", [os.getppid()] * 8)  # every slot held by a live process
    path.write_bytes(fields.tobytes())
    with pytest.raises(
        RuntimeError, match=f"no free connection slot among 8 for worker {os.getpid()}"
    ):
        ConnectionShares(path)
    with pytest.raises(ValueError, match="at least 2 workers, got 1"):
        create_shares_file(tmp_path / "one", workers=1)


class _Transport:
    """What uvicorn's protocol asks of an asyncio transport."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", self.port)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_protocol(self, protocol) -> None: ...


async def _hello(scope, receive, send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"hi"})


def test_the_worker_over_its_share_closes_one_connection_after_its_answer(tmp_path, monkeypatch):
    path = create_shares_file(tmp_path / "shares", workers=2)
    monkeypatch.setenv(SHARES_ENV, str(path))
    balance._process_shares.cache_clear()
    other = ConnectionShares(path, pid=os.getppid())
    other.add(1)  # the other worker holds one connection; this one will hold three

    async def serve() -> list[_Transport]:
        config = Config(_hello, http=BalancedHttpToolsProtocol, lifespan="off", access_log=False)
        config.load()
        state = ServerState()
        transports = [_Transport(port) for port in (5001, 5002, 5003)]
        protocols = []
        for transport in transports:
            protocol = BalancedHttpToolsProtocol(config=config, server_state=state, app_state={})
            protocol.connection_made(transport)
            protocols.append(protocol)
        for protocol in protocols:
            protocol.data_received(b"GET / HTTP/1.1\r\nHost: vidrec\r\n\r\n")
            await asyncio.sleep(0.01)
        return transports

    try:
        first, second, third = asyncio.run(serve())
        mine = balance._process_shares()
        # 3 of 4 is over ceil(4 / 2): the first answer closes its connection, and the worker
        # counts 2 at once, so the other two stay open.
        assert first.written == (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi"
        )
        assert first.closed
        for kept in (second, third):
            assert kept.written == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
            assert not kept.closed
        assert mine.held == 2 and not mine.over_share()
    finally:
        balance._process_shares.cache_clear()

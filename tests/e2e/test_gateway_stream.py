"""The live stream over real HTTP: uvicorn in this event loop on port 0, browsers as raw sockets,
availability fed straight to the gateway's fan-out (no services: its own watch just keeps
retrying in the background). The writer writes to the connections itself, so this checks what
a browser gets on the wire: the headers of every response, HTTP/1.1 chunks (or a plain body for
HTTP/1.0), every event's latest state, and that a browser that stops reading holds at most one
write in the gateway, delays no one, and afterwards gets only the newest state of each event.
Last, ``python -m gateway`` with SLOTLOCK_WORKERS=2: two processes serving the one port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.app import Gateway
from gateway.fanout import AvailabilityFanout, TransportSink
from gateway.settings import Settings
from slotlock_cli.devstack import free_port
from tests import support
from tests.support import serving_gateway
from tests.unit.test_gateway import availability

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[int, AvailabilityFanout]]:
    """The gateway's port and its fan-out."""
    settings = Settings(
        port=0,
        reservation_addr="127.0.0.1:9",
        availability_addr="127.0.0.1:9",  # nothing there: the watch retries, the feed is paused
        watch_retry_max_s=0.5,
        secure_cookies=False,
    )
    async with serving_gateway(settings) as (port, app):
        gateway: Gateway = app.state.gateway
        yield port, gateway.fanout


class Browser:
    """A raw connection to /api/stream that decodes what arrives as SSE frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.raw = b""  # what came and is not decoded yet (chunked or not)
        self.body = b""  # the body with any chunk framing taken off, not yet split into frames
        self.text = b""  # every complete frame so far
        self.versions: dict[str, int] = {}
        self.frames: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    async def open(cls, port: int, version: str = "1.1", **sockopts: int) -> Browser:
        sock = socket.socket()
        for option, value in sockopts.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET /api/stream HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        browser = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = head.decode().strip().split("\r\n")
        assert status.split()[1] == "200", status
        browser.headers = {
            name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)
        }
        browser.chunked = browser.headers.get("transfer-encoding") == "chunked"
        return browser

    async def read_until(self, done: Any, within_s: float = 15.0) -> None:
        """Read until ``done(self)`` holds."""
        async with asyncio.timeout(within_s):
            while not done(self):
                data = await self.reader.read(65536)
                assert data, "the gateway closed the stream"
                self.raw += data
                self._decode()

    def _decode(self) -> None:
        """Take complete chunks off ``raw`` into ``body``, complete frames off ``body``."""
        if self.chunked:
            while True:
                size_line, crlf, after = self.raw.partition(b"\r\n")
                if not crlf or len(after) < int(size_line, 16) + 2:
                    break
                size = int(size_line, 16)
                assert after[size : size + 2] == b"\r\n", "a broken chunk"
                self.body += after[:size]
                self.raw = after[size + 2 :]
        else:
            self.body, self.raw = self.body + self.raw, b""
        *frames, self.body = self.body.split(b"\n\n")
        for frame in frames:
            self.text += frame + b"\n\n"
            lines = frame.decode().split("\n")
            if lines[0].startswith("event: "):
                data = json.loads(lines[1].removeprefix("data: "))
                self.frames.append((lines[0].removeprefix("event: "), data))
                if lines[0] == "event: availability":
                    event_id = data["event_id"]
                    self.versions[event_id] = max(self.versions.get(event_id, 0), data["version"])

    def latest(self) -> dict[str, int]:
        """The newest version seen of each event."""
        return self.versions

    def close(self) -> None:
        self.writer.close()


async def eventually(check: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_stream_over_http_1_1_is_chunked_with_every_header_and_frame(
    gateway: tuple[int, AvailabilityFanout],
) -> None:
    port, fanout = gateway
    fanout.apply(availability("a", 1, pending=1))
    browser = await Browser.open(port)
    assert browser.headers["content-type"].startswith("text/event-stream")
    assert browser.headers["cache-control"] == "no-cache"
    assert browser.headers["x-accel-buffering"] == "no"
    assert browser.headers["x-content-type-options"] == "nosniff"  # the security middleware's
    assert "content-length" not in browser.headers
    assert browser.chunked
    await browser.read_until(lambda b: b.latest() == {"a": 1})
    assert browser.text.startswith(b"retry: 1000\n\n")
    assert browser.frames[0][0] == "status"  # the feed status comes first
    fanout.apply(availability("b", 1))
    fanout.apply(availability("a", 2, pending=2))
    await browser.read_until(lambda b: b.latest() == {"a": 2, "b": 1})
    assert fanout.watcher_count == 1
    browser.close()
    await eventually(lambda: fanout.watcher_count == 0)


async def test_an_http_1_0_browser_gets_the_frames_without_chunks(
    gateway: tuple[int, AvailabilityFanout],
) -> None:
    port, fanout = gateway
    fanout.apply(availability("a", 1))
    browser = await Browser.open(port, version="1.0")
    assert not browser.chunked
    fanout.apply(availability("a", 2))
    await browser.read_until(lambda b: b.latest() == {"a": 2})
    assert browser.text.startswith(b"retry: 1000\n\nevent: status\n")
    browser.close()


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_the_frames_match_the_framing_the_server_declared(
    http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's httptools protocol frames a response to HTTP/1.0 as chunks too (h11 does not):
    the writer's own writes must be framed as the headers said, whichever protocol runs."""
    if http == "httptools":
        pytest.importorskip("httptools")
    build = support.build_server

    def build_with(settings: Settings, **kwargs: Any) -> Any:
        server = build(settings, **kwargs)
        server.config.http = http
        return server

    monkeypatch.setattr(support, "build_server", build_with)
    settings = Settings(
        port=0,
        reservation_addr="127.0.0.1:9",
        availability_addr="127.0.0.1:9",
        watch_retry_max_s=0.5,
        secure_cookies=False,
    )
    async with serving_gateway(settings) as (port, app):
        fanout = app.state.gateway.fanout
        fanout.apply(availability("a", 1))
        for version in ("1.0", "1.1"):
            browser = await Browser.open(port, version=version)
            fanout.apply(availability("a", fanout._versions["a"] + 1))
            want = fanout._versions["a"]
            await browser.read_until(lambda b, want=want: b.latest() == {"a": want})
            browser.close()


async def test_a_browser_that_stops_reading_holds_one_write_and_delays_no_one(
    gateway: tuple[int, AvailabilityFanout],
) -> None:
    port, fanout = gateway
    events = [f"event-{n}" for n in range(200)]
    for event_id in events:
        fanout.apply(availability(event_id, 1))
    stuck = await Browser.open(port, SO_RCVBUF=4096)
    here = stuck.writer.get_extra_info("sockname")[1]
    (sink,) = [
        b.sink
        for b in list(fanout._browsers)
        if isinstance(b.sink, TransportSink)
        and b.sink._transport.get_extra_info("peername")[1] == here
    ]
    # Small kernel buffers on the gateway's side too, so that they fill after a few KB.
    sink._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reader = await Browser.open(port)
    await reader.read_until(lambda b: len(b.latest()) == len(events))
    rounds = 30
    for version in range(2, rounds + 2):
        for event_id in events:
            fanout.apply(availability(event_id, version))
        want = dict.fromkeys(events, version)
        await reader.read_until(lambda b, want=want: b.latest() == want)
    # What the gateway holds for it: the rest of one write, never a queue of the rounds.
    held = sink._transport.get_write_buffer_size()
    assert 0 < held <= len(fanout.payload(0, True))
    # Once it reads again it catches up with the newest state of each event, and skips most
    # of the states in between.
    await stuck.read_until(lambda b: b.latest() == dict.fromkeys(events, rounds + 1))
    seen = sum(1 for name, _ in stuck.frames if name == "availability")
    assert seen <= len(events) * 4, seen


def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    """SLOTLOCK_WORKERS=2: two gateway processes under one parent, each serving streams on the
    same port; SIGTERM to the parent stops them all."""
    port = free_port()
    env = {
        **os.environ,
        "SLOTLOCK_WORKERS": "2",
        "SLOTLOCK_GATEWAY_PORT": str(port),
        "SLOTLOCK_RESERVATION_ADDR": "127.0.0.1:9",
        "SLOTLOCK_AVAILABILITY_ADDR": "127.0.0.1:9",
        "SLOTLOCK_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "gateway.log").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway"], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        workers: list[psutil.Process] = []
        while len(workers) < 2 or not all(_listens(worker, port) for worker in workers):
            assert parent.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
            workers = [
                child
                for child in psutil.Process(parent.pid).children()
                if "worker" in " ".join(child.cmdline())  # its title: "... worker 1/2 :PORT"
            ]
        # 32 browsers: the kernel spreads them over both workers (all on one: 2 in 2**32).
        streams = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        for sock in streams:
            sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in streams:
            data = b""
            while b"event: status" not in data:
                data += sock.recv(65536)
        served = [
            sum(
                1
                for c in worker.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
            )
            for worker in workers
        ]
        assert sum(served) == 32 and all(served), served
        for sock in streams:
            sock.close()
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(20) == 0
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        log.close()


def _listens(process: psutil.Process, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        for c in process.net_connections("tcp")
    )

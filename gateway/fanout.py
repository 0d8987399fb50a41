"""One WatchAvailability stream per gateway process, written to every browser by one loop.

The gateway keeps the latest Server-Sent Events frame of each event, serialized and encoded once,
in the order the events last changed, each stamped with a sequence number that rises by one per
change (the feed's status is one more slot). A browser is only a cursor: the sequence number of
the last change written to it. One writer task sweeps the browsers behind the feed and writes to
each, in one write, the latest frame of every event changed after its cursor (status first). A
browser that falls behind therefore only ever receives the newest state of each event; the bytes
for a cursor are built once and shared by every browser at that cursor (after an update that is
nearly all of them, and a new browser, at cursor 0, gets the one shared snapshot of the whole
catalog). No task, queue or frame is kept per browser, so an idle browser costs a few KB and an
update costs one ``write`` per browser, not a task wake-up and a trip through the ASGI stack.

Under uvicorn the writer writes to the connection's transport itself (with HTTP/1.1 chunked
framing; the response's status line and headers go through the app's middleware as usual). A
browser whose socket has not taken its previous write is skipped and tried again shortly:
whatever changes meanwhile is conflated, so a slow browser holds at most one write in the gateway
and delays no one. Under another ASGI server (and in-process tests) each browser gets a
one-write slot its response drains through the ordinary ASGI ``send``. The watch itself is
``slotlock.client``'s resumable one: when the availability service goes away it is retried with
backoff, resuming with the versions already seen, and browsers are told the feed is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from gateway import payloads
from gateway.settings import Settings
from slotlock import client, metrics
from slotlock.conflation import is_newer
from slotlock.v1 import availability_pb2

if TYPE_CHECKING:  # the typed async stub exists only in the generated .pyi
    from slotlock.v1.availability_pb2_grpc import AvailabilityServiceAsyncStub

log = logging.getLogger(__name__)

STATUS_SLOT = ""  # never an event id
KEEPALIVE = b": keepalive\n\n"
RETRY = b"retry: 1000\n\n"  # tells EventSource to come back quickly if the gateway restarts
# A browser whose socket still held its previous write is tried again this soon.
RETRY_BUSY_S = 0.05
# Browsers written between two turns of the event loop during a sweep: a sweep over 10,000
# browsers takes about 100 ms, which requests and the watch should not wait for.
YIELD_EVERY = 500
NOT_STARTED = -1  # a browser's cursor until its response headers are out


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame, encoded once for every browser."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (what the server would frame it as)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class TooManyWatchers(Exception):
    """The gateway already streams to as many browsers as it is configured for."""


class Sink(Protocol):
    """Where a browser's bytes go. ``write`` never blocks: False means the previous write is
    still on its way (the browser is tried again later, with whatever is newest by then)."""

    chunked: bool  # the bytes must be framed as HTTP/1.1 chunks

    def write(self, data: bytes) -> bool: ...

    def close(self) -> None: ...


class TransportSink:
    """The connection's own transport (uvicorn): bytes go straight to the socket."""

    __slots__ = ("_transport", "chunked")

    def __init__(self, transport: asyncio.WriteTransport, *, chunked: bool) -> None:
        self._transport = transport
        self.chunked = chunked

    def write(self, data: bytes) -> bool:
        transport = self._transport
        if transport.is_closing():
            return True  # gone: its response notices the disconnect and unsubscribes
        if transport.get_write_buffer_size():
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        """End the stream (the gateway is stopping): the response sees a disconnect."""
        if not self._transport.is_closing():
            if self.chunked:
                self._transport.write(b"0\r\n\r\n")
            self._transport.close()


class SlotSink:
    """One pending write, drained by the browser's response through ASGI ``send``."""

    __slots__ = ("_closed", "_pending", "_wake")
    chunked = False

    def __init__(self) -> None:
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._closed = False

    def write(self, data: bytes) -> bool:
        if self._pending is not None:
            return False
        self._pending = data
        self._wake.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def writes(self) -> AsyncIterator[bytes]:
        """Each write, as the writer makes it; ends once closed and drained."""
        while True:
            if self._pending is not None:
                data, self._pending = self._pending, None
                yield data
            elif self._closed:
                return
            else:
                self._wake.clear()
                await self._wake.wait()


class Browser:
    """One browser: where its bytes go and the sequence number of the last change it got."""

    __slots__ = ("cursor", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.cursor = NOT_STARTED


class AvailabilityFanout:
    """The shared watch, the latest frame per event, the browsers and the one writer."""

    def __init__(
        self,
        stub: AvailabilityServiceAsyncStub,
        health: client.HealthService,
        settings: Settings,
        *,
        max_watchers: int = 10_000,
    ) -> None:
        self._stub = stub
        self._health = health
        self._settings = settings
        self._max_watchers = max_watchers
        self._versions: dict[str, int] = {}
        # slot (event id, or STATUS_SLOT) -> (sequence number of its last change, frame), in the
        # order of those changes: the newest last.
        self._changes: dict[str, tuple[int, bytes]] = {}
        self._seq = 0
        # (cursor, chunked) -> the bytes a browser at that cursor gets now; cleared per change.
        self._payloads: dict[tuple[int, bool], bytes] = {}
        self._browsers: set[Browser] = set()
        metrics.SSE_CLIENTS.set_function(lambda: len(self._browsers))
        self._dirty = asyncio.Event()
        self._retry_at: asyncio.TimerHandle | None = None
        self._swept = 0  # the sequence number the last full pass started at
        self._behind: list[Browser] = []  # left behind by the last pass (busy), or new
        self.live = False
        self.message = "connecting to the availability service"
        self._changed(STATUS_SLOT, self._make_status_frame())
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def watcher_count(self) -> int:
        return len(self._browsers)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="availability-watch"),
            asyncio.create_task(self._write_loop(), name="sse-writer"),
        ]

    async def stop(self) -> None:
        for browser in self._browsers:
            browser.sink.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def subscribe(self, sink: Sink) -> Browser:
        """A new browser; it gets nothing until ``start_browser`` (its headers must go first),
        then the feed status and the current state of every event, then every change."""
        if len(self._browsers) >= self._max_watchers:
            raise TooManyWatchers("too many live listings are open on this gateway; try again")
        browser = Browser(sink)
        self._browsers.add(browser)
        return browser

    def start_browser(self, browser: Browser) -> None:
        browser.cursor = 0
        self._behind.append(browser)
        self._dirty.set()

    def unsubscribe(self, browser: Browser) -> None:
        self._browsers.discard(browser)

    def payload(self, cursor: int, chunked: bool) -> bytes:
        """What a browser at ``cursor`` gets now: the status if it changed, then the latest
        frame of every event changed after ``cursor``, oldest change first; built once per
        change for all browsers at that cursor."""
        key = (cursor, chunked)
        cached = self._payloads.get(key)
        if cached is None:
            status = b""
            frames: list[bytes] = []
            for slot, (seq, frame) in reversed(self._changes.items()):
                if seq <= cursor:
                    break
                if slot == STATUS_SLOT:
                    status = frame
                else:
                    frames.append(frame)
            frames.append(status)
            frames.reverse()
            cached = b"".join(frames)
            if chunked:
                cached = chunk(cached)
            self._payloads[key] = cached
        return cached

    def sweep_now(self) -> tuple[int, int]:
        """Write to every browser behind the feed at once: (written, busy). For tests; the
        writer task sweeps in slices (``_sweep``)."""
        written = busy = 0
        for browser in list(self._browsers):
            if self._write(browser):
                written += 1
            elif browser.cursor != self._seq and browser.cursor != NOT_STARTED:
                busy += 1
        return written, busy

    def _write(self, browser: Browser) -> bool:
        """Bring one browser up to date; False if it already was, is not started or is busy."""
        cursor = browser.cursor
        if cursor == self._seq or cursor == NOT_STARTED:
            return False
        sink = browser.sink
        if not sink.write(self.payload(cursor, sink.chunked)):
            return False
        browser.cursor = self._seq
        return True

    async def _sweep(self) -> int:
        """One pass over the browsers, yielding to the loop now and then; how many were busy.
        Changes that arrive meanwhile reach the browsers not yet passed in this sweep and the
        others in the next one. Without a change since the last pass, only the browsers left
        behind (busy, or new) are visited: a browser that stays stuck costs a check per retry,
        not a pass over everyone."""
        if self._seq != self._swept:
            self._swept = self._seq
            candidates = list(self._browsers)
        else:
            candidates = self._behind
        self._behind = []
        for n, browser in enumerate(candidates, 1):
            if (
                not self._write(browser)
                and browser.cursor not in (self._seq, NOT_STARTED)
                and browser in self._browsers
            ):
                self._behind.append(browser)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return len(self._behind)

    def _keepalive(self) -> None:
        """A comment line to every idle browser, so that proxies keep quiet streams open."""
        framed = {False: KEEPALIVE, True: chunk(KEEPALIVE)}
        for browser in self._browsers:
            if browser.cursor != NOT_STARTED:
                browser.sink.write(framed[browser.sink.chunked])

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        keepalive_s = self._settings.sse_keepalive_s
        # Keepalives are due once the feed has not changed for keepalive_s. Measured from the
        # last change, not from the last wake-up: the retries of a browser whose socket stays
        # full wake the writer every RETRY_BUSY_S and would otherwise starve everyone else's.
        seq, quiet_until = self._seq, loop.time() + keepalive_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), quiet_until - loop.time())
            if self._seq != seq:
                seq, quiet_until = self._seq, loop.time() + keepalive_s
            elif loop.time() >= quiet_until:
                self._keepalive()
                quiet_until = loop.time() + keepalive_s
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                busy = await self._sweep()
            except Exception:  # a bug here must not end live updates for everyone
                log.exception("writing to the browsers failed unexpectedly")
                busy = 1
            if busy and self._retry_at is None:
                self._retry_at = loop.call_later(RETRY_BUSY_S, self._retry)

    def _retry(self) -> None:
        self._retry_at = None
        self._dirty.set()

    def _changed(self, slot: str, frame: bytes) -> None:
        self._seq += 1
        self._changes.pop(slot, None)
        self._changes[slot] = (self._seq, frame)
        self._payloads.clear()
        self._dirty.set()

    def apply(self, ev: availability_pb2.EventAvailability) -> bool:
        """Keep ``ev`` if it is newer than what we have, and pass it on; versions never go back."""
        if not is_newer(ev.version, self._versions.get(ev.event_id)):
            return False
        self._versions[ev.event_id] = ev.version
        self._changed(ev.event_id, sse_frame("availability", payloads.availability_json(ev)))
        return True

    def _set_status(self, live: bool, message: str) -> None:
        if (live, message) == (self.live, self.message):
            return
        if live != self.live:
            log.info("availability feed %s: %s", "live" if live else "paused", message)
        self.live, self.message = live, message
        self._changed(STATUS_SLOT, self._make_status_frame())

    def _on_watch_status(self, live: bool, reason: str) -> None:
        self._set_status(live, "live" if live else f"live updates paused: {reason}; reconnecting")

    def _make_status_frame(self) -> bytes:
        return sse_frame("status", {"live": self.live, "message": self.message})

    async def _run(self) -> None:
        backoff = client.Backoff(
            initial_s=self._settings.watch_retry_min_s, max_s=self._settings.watch_retry_max_s
        )
        while True:
            watch = client.AvailabilityWatch(
                self._stub,
                self._health,
                known_versions=dict(self._versions),
                backoff=backoff,
                check_timeout_s=self._settings.rpc_timeout_s,
                retry_codes=None,  # whatever the status, the gateway must not stop its feed
                on_status=self._on_watch_status,
            )
            try:
                async for ev in watch:
                    self.apply(ev)
            except Exception:  # a bug here must not silently end live updates for everyone
                log.exception("availability watch failed unexpectedly")
                self._on_watch_status(False, "the gateway hit an unexpected error")
                await asyncio.sleep(backoff.max_s)

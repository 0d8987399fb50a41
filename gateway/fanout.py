"""One WatchAvailability stream per gateway process, fanned out to every browser.

The gateway keeps the latest Server-Sent Events frame of each event (serialized and encoded once,
shared by all browsers) and each browser gets a ``slotlock.conflation.Mailbox`` of frames: the
newest per event plus the newest feed status, and a wake-up. A new browser is primed with one
pre-encoded snapshot of every event (built once per change of the catalog's state, shared by
every browser that arrives meanwhile), not a slot per event: an idle browser costs a few KB, not
one dict entry per event plus a copy of every frame in its first write. A slow browser therefore
only ever receives the newest state of each event; memory per browser is bounded by the number of
events, never by the number of updates, and no browser can hold up the feed. The watch itself is
``slotlock.client``'s resumable one: when the availability service goes away it is retried with
backoff, resuming with the versions already seen, and browsers are told the feed is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from gateway import payloads
from gateway.settings import Settings
from slotlock import client, metrics
from slotlock.conflation import Mailbox, is_newer
from slotlock.v1 import availability_pb2

if TYPE_CHECKING:  # the typed async stub exists only in the generated .pyi
    from slotlock.v1.availability_pb2_grpc import AvailabilityServiceAsyncStub

log = logging.getLogger(__name__)

STATUS_SLOT = ""  # never an event id
SNAPSHOT_SLOT = "*"  # never an event id either: the state of every event when a browser arrived
KEEPALIVE = b": keepalive\n\n"
# A frame this large (the snapshot of a big catalog) is written as the shared object itself, never
# joined into a per-browser copy.
SHARED_FRAME_BYTES = 16 * 1024


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame, encoded: the same bytes object goes to every browser (Starlette sends
    bytes as they are; a str would be encoded again for each browser)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class TooManyWatchers(Exception):
    """The gateway already streams to as many browsers as it is configured for."""


class Watcher(Mailbox[str, bytes]):
    """One browser's pending frames: the newest per event, plus the newest feed status. No
    version check here: ``AvailabilityFanout.apply`` has already kept only newer states."""

    __slots__ = ()

    async def next_frames(self, idle_s: float) -> list[bytes]:
        """The frames waiting now (status first), or [] after ``idle_s`` s of quiet."""
        await self.wait(idle_s)
        status = self.pop(STATUS_SLOT)
        return ([status] if status else []) + self.take()

    async def next_writes(self, idle_s: float) -> list[bytes]:
        """What to write to the browser next: small frames joined into one write, a large one
        (a big catalog's snapshot) as the shared object itself, never copied per browser; a
        keep-alive comment after ``idle_s`` s of quiet."""
        frames = await self.next_frames(idle_s)
        if not frames:
            return [KEEPALIVE]
        if len(frames) == 1 or any(len(frame) > SHARED_FRAME_BYTES for frame in frames):
            return frames
        return [b"".join(frames)]


class AvailabilityFanout:
    """The shared watch, its cache of the latest frame per event, and the browsers listening."""

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
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._snapshot: bytes | None = None  # every latest frame, joined; None: to be rebuilt
        self._watchers: set[Watcher] = set()
        metrics.SSE_CLIENTS.set_function(lambda: len(self._watchers))
        self.live = False
        self.message = "connecting to the availability service"
        self._status_frame = self._make_status_frame()
        self._task: asyncio.Task[None] | None = None

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="availability-watch")

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self) -> Watcher:
        """A new browser: primed with the feed status and the current state of every event."""
        if len(self._watchers) >= self._max_watchers:
            raise TooManyWatchers("too many live listings are open on this gateway; try again")
        watcher = Watcher()
        watcher.offer(STATUS_SLOT, self._status_frame)
        snapshot = self.snapshot()
        if snapshot:
            # Before any later update of an event: a Mailbox hands values out in the order their
            # keys were first offered, so a newer frame always follows the snapshot's older one.
            watcher.offer(SNAPSHOT_SLOT, snapshot)
        self._watchers.add(watcher)
        return watcher

    def snapshot(self) -> bytes:
        """The latest frame of every event, as one shared bytes object (rebuilt lazily after a
        change, so a burst of arrivals between two updates shares one)."""
        if self._snapshot is None:
            self._snapshot = b"".join(frame for _, frame in self._latest.values())
        return self._snapshot

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def apply(self, ev: availability_pb2.EventAvailability) -> bool:
        """Keep ``ev`` if it is newer than what we have, and pass it on; versions never go back."""
        known = self._latest.get(ev.event_id)
        if not is_newer(ev.version, None if known is None else known[0]):
            return False
        frame = sse_frame("availability", payloads.availability_json(ev))
        self._latest[ev.event_id] = (ev.version, frame)
        self._snapshot = None
        for watcher in self._watchers:
            watcher.offer(ev.event_id, frame)
        return True

    def _set_status(self, live: bool, message: str) -> None:
        if (live, message) == (self.live, self.message):
            return
        if live != self.live:
            log.info("availability feed %s: %s", "live" if live else "paused", message)
        self.live, self.message = live, message
        self._status_frame = self._make_status_frame()
        for watcher in self._watchers:
            watcher.offer(STATUS_SLOT, self._status_frame)

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
                known_versions={event_id: v for event_id, (v, _) in self._latest.items()},
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

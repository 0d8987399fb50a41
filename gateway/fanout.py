"""One WatchAvailability stream per gateway process, fanned out to every browser.

The gateway keeps the latest Server-Sent Events frame of each event (serialized once, shared by all
browsers) and each browser gets a small "latest per event" slot map plus a wake-up signal. A slow
browser therefore only ever receives the newest state of each event (conflation); memory per browser
is bounded by the number of events, never by the number of updates, and no browser can hold up the
feed. When the availability service goes away the watch is retried with backoff, resuming with the
versions already seen, and browsers are told the feed is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from gateway import payloads
from gateway.settings import Settings
from slotlock.grpc_errors import unwrap
from slotlock.v1 import availability_pb2

log = logging.getLogger(__name__)

STATUS_SLOT = ""  # never an event id


def sse_frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class TooManyWatchers(Exception):
    """The gateway already streams to as many browsers as it is configured for."""


class Watcher:
    """One browser's pending frames: the newest per event, plus the newest feed status."""

    def __init__(self) -> None:
        self._slots: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, slot: str, frame: str) -> None:
        self._slots[slot] = frame
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_frames(self, idle_s: float) -> list[str]:
        """The frames waiting now (status first), or [] after ``idle_s`` s of quiet."""
        if not self._slots and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle_s)
        self._wake.clear()
        slots, self._slots = self._slots, {}
        status = slots.pop(STATUS_SLOT, None)
        return ([status] if status else []) + list(slots.values())


class AvailabilityFanout:
    """The shared watch, its cache of the latest frame per event, and the browsers listening."""

    def __init__(
        self, stub: Any, health: Any, settings: Settings, *, max_watchers: int = 10_000
    ) -> None:
        self._stub = stub
        self._health = health
        self._settings = settings
        self._max_watchers = max_watchers
        self._latest: dict[str, tuple[int, str]] = {}
        self._watchers: set[Watcher] = set()
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
        for event_id, (_, frame) in self._latest.items():
            watcher.offer(event_id, frame)
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def apply(self, ev: availability_pb2.EventAvailability) -> bool:
        """Keep ``ev`` if it is newer than what we have, and pass it on; versions never go back."""
        known = self._latest.get(ev.event_id)
        if known is not None and known[0] >= ev.version:
            return False
        frame = sse_frame("availability", payloads.availability_json(ev))
        self._latest[ev.event_id] = (ev.version, frame)
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

    def _make_status_frame(self) -> str:
        return sse_frame("status", {"live": self.live, "message": self.message})

    async def _run(self) -> None:
        delay = self._settings.watch_retry_min_s
        while True:
            call = None
            try:
                # The watch itself says nothing until an event changes (its initial metadata comes
                # with the first message), so ask the health service whether the feed is ready.
                await self._check_serving()
                request = availability_pb2.WatchAvailabilityRequest(
                    known_versions={event_id: v for event_id, (v, _) in self._latest.items()}
                )
                call = self._stub.WatchAvailability(request)
                self._set_status(True, "live")
                async for ev in call:
                    self.apply(ev)
                    delay = self._settings.watch_retry_min_s
                reason = "the availability service closed the stream"
            except grpc.aio.AioRpcError as error:
                code, message = unwrap(error)
                log.debug("availability watch failed: %s %s", code.name, message)
                reason = describe_unavailable("availability", code, message)
            except NotServing as error:
                reason = str(error)
            except asyncio.CancelledError:
                if call is not None:
                    call.cancel()
                raise
            except Exception:  # a bug here must not silently end live updates for everyone
                log.exception("availability watch failed unexpectedly")
                reason = "the gateway hit an unexpected error"
                if call is not None:
                    call.cancel()
            self._set_status(False, f"live updates paused: {reason}; reconnecting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.watch_retry_max_s)

    async def _check_serving(self) -> None:
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=self._settings.rpc_timeout_s
        )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise NotServing("the availability service is starting up")


class NotServing(Exception):
    """The availability service answers but is not ready (still rebuilding its view)."""


# Transport-level failures whose wording means nothing to a person buying a ticket.
_TRANSPORT_WORDS = (
    "failed to connect",
    "connection refused",
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway",
    "dns resolution",
    "connection attempt timed out",
    "endpoint closing",
)


def describe_unavailable(service: str, code: grpc.StatusCode, message: str) -> str:
    """A readable reason for a failed call: the service's own words when it gave some, else a
    plain sentence (gRPC's transport errors are for operators, not for buyers)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service did not answer in time"
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = message.lower()
        if not message or message == code.name or any(word in lowered for word in _TRANSPORT_WORDS):
            return f"the {service} service is not reachable right now"
        return f"the {service} service is unavailable: {message}"
    if code == grpc.StatusCode.CANCELLED:
        return f"the {service} service went away"
    return f"the {service} service failed: {message}"

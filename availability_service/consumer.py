"""The JetStream side: rebuild the view from the last message of each event subject, then follow
the tail; resync from last-per-subject whenever continuity is in doubt.

Why a hand-made consumer rather than nats-py's ``ordered_consumer``: on a gap that one resumes
"by start sequence", which after a broker restart or a recreated stream can point past messages
we never saw. Resyncing from the last message per subject always converges (versions make
re-application idempotent), and the view keeps serving while it happens. The push consumer is
ephemeral, in memory, without acks, with flow control and idle heartbeats; messages arrive on a
callback subscription (``async for`` is far slower).

NATS errors stop here: they are logged, retried with tenacity, and surface as
``slotlock.errors.Unavailable``.

How far behind the feed the view is (``lag_s``): the view is known current as of the last moment
the consumer had applied everything the stream held (a message with nothing pending after it, or
an idle heartbeat that confirms no delivery was missed); while catching up, as of the publish time
of the newest message applied. Health follows it (``AvailabilityServer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import tenacity
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from availability_service import convert
from availability_service.projection import EventFacts
from availability_service.view import AvailabilityView
from slotlock import errors, metrics, tracing
from slotlock.feed import Feed

log = logging.getLogger(__name__)

_STATUS = "Status"
_DESCRIPTION = "Description"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"
_LAST_CONSUMER = "Nats-Last-Consumer"

_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    nats.errors.Error,
    nats.js.errors.Error,
)


class FeedConsumer:
    """Keeps ``view`` in step with ``feed`` on the NATS server at ``nats_url``."""

    def __init__(
        self,
        nats_url: str,
        feed: Feed,
        view: AvailabilityView,
        *,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.nats_url = nats_url
        self.feed = feed
        self.view = view
        self.heartbeat_s = heartbeat_s
        self.syncs = 0  # how many (re)syncs ran; tests and logs read it
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._consumer_name: str | None = None
        self._generation = 0
        self._next_dseq = 1
        self._last_activity = time.monotonic()
        self._sync_started = 0.0
        self._need_sync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._current_as_of = time.monotonic()  # see lag_s

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def lag_s(self) -> float:
        """Seconds since the view was last known to hold everything on the feed."""
        return max(0.0, time.monotonic() - self._current_as_of)

    def _note_current(self, as_of: float | None = None) -> None:
        now = time.monotonic()
        self._current_as_of = max(self._current_as_of, now if as_of is None else min(as_of, now))

    async def start(self) -> None:
        """Start following the feed in the background; the view turns ready once caught up."""
        self._need_sync.set()
        self._task = asyncio.create_task(self._run(), name="availability-feed")

    async def stop(self) -> None:
        self._stopping = True
        self._need_sync.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    # -- the supervisor: (re)connect, (re)sync, watch liveness -------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._nc is None:
                    await self._connect()
                if self._need_sync.is_set():
                    self._need_sync.clear()
                    await self._sync()
            except errors.Unavailable as error:
                log.warning("feed unavailable, will retry: %s", error.message)
                self._need_sync.set()
                await asyncio.sleep(0.5)
                continue
            except Exception:
                # Never let the feed die silently: a stale view that says so beats a frozen one.
                log.exception("unexpected error following the feed; resyncing in 1s")
                self._need_sync.set()
                await asyncio.sleep(1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._need_sync.wait(), self.heartbeat_s)
            silent_for = time.monotonic() - self._last_activity
            if (
                not self._need_sync.is_set()
                and self._nc is not None
                and self._nc.is_connected
                and silent_for > 3 * self.heartbeat_s
            ):
                log.warning("no heartbeat from the feed for %.1fs; resyncing", silent_for)
                self._need_sync.set()

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(errors.Unavailable),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    async def _connect(self) -> None:
        quiet = [False]  # one warning per outage, not one per reconnect attempt

        async def on_reconnected() -> None:
            quiet[0] = False
            log.info("reconnected to NATS; resyncing from the last message per event")
            self._need_sync.set()

        async def on_disconnected() -> None:
            log.warning("disconnected from NATS; serving the last known view")

        async def on_error(error: Exception) -> None:
            log.log(logging.DEBUG if quiet[0] else logging.WARNING, "NATS: %s", error)
            quiet[0] = True

        try:
            nc = await nats.connect(
                self.nats_url,
                name="slotlock-availability",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                reconnected_cb=on_reconnected,
                disconnected_cb=on_disconnected,
                error_cb=on_error,
            )
        except _TRANSIENT as error:
            raise errors.Unavailable(f"cannot reach NATS at {self.nats_url}: {error!r}") from None
        # Short API timeouts: a request lost around a broker restart is retried, not waited on.
        self._nc, self._js = nc, nc.jetstream(timeout=2.0)

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(errors.Unavailable),
        wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
        stop=tenacity.stop_after_attempt(5),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    async def _sync(self) -> None:
        """Replace the consumer with a fresh one delivering the last message of every subject,
        then the tail. Messages of older generations are ignored from here on."""
        nc, js = self._nc, self._js
        if nc is None or js is None:
            raise errors.Unavailable("not connected to NATS yet")
        self._generation += 1
        generation = self._generation
        self._next_dseq = 1
        self._sync_started = time.monotonic()
        self._last_activity = time.monotonic()
        self.syncs += 1
        metrics.FEED_RESYNCS.inc()
        old_sub, old_consumer = self._sub, self._consumer_name
        self._sub = self._consumer_name = None
        try:
            if old_sub is not None:
                with contextlib.suppress(*_TRANSIENT):
                    await old_sub.unsubscribe()
            if old_consumer is not None:
                with contextlib.suppress(*_TRANSIENT):
                    await js.delete_consumer(self.feed.stream, old_consumer)
            await self.feed.ensure_stream(js)
            inbox = nc.new_inbox()
            self._sub = await nc.subscribe(inbox, cb=self._callback(generation))
            info = await js.add_consumer(
                self.feed.stream,
                api.ConsumerConfig(
                    deliver_subject=inbox,
                    deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                    filter_subject=self.feed.all_subjects,
                    ack_policy=api.AckPolicy.NONE,
                    flow_control=True,
                    idle_heartbeat=self.heartbeat_s,
                    mem_storage=True,
                    num_replicas=1,
                    inactive_threshold=max(10.0, 5 * self.heartbeat_s),
                ),
            )
        except _TRANSIENT as error:
            raise errors.Unavailable(f"cannot subscribe to the feed: {error!r}") from None
        self._consumer_name = info.name
        log.info(
            "following stream %s (%s), %s messages to catch up",
            self.feed.stream,
            self.feed.all_subjects,
            info.num_pending,
        )
        if not info.num_pending and generation == self._generation:
            self._note_current()
            self._caught_up()

    # -- the message path ----------------------------------------------------------------------

    def _callback(self, generation: int) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            if generation != self._generation:
                return  # a message for a consumer we already replaced
            self._last_activity = time.monotonic()
            headers = msg.headers
            if headers and not msg.data and headers.get(_STATUS) == "100":
                await self._on_control(msg, headers)
                return
            try:
                metadata = msg.metadata
            except Exception:
                log.warning("ignoring a non-JetStream message on %s", msg.subject)
                return
            if metadata.sequence.consumer != self._next_dseq:
                log.warning(
                    "feed gap (expected delivery %d, got %d); resyncing",
                    self._next_dseq,
                    metadata.sequence.consumer,
                )
                self._generation += 1  # drop everything until the resync
                self._need_sync.set()
                return
            self._next_dseq += 1
            try:
                facts = convert.parse_change(msg.data)
            except DecodeError:
                log.warning("ignoring an undecodable message on %s", msg.subject)
            else:
                if facts.event_id:
                    self._apply(facts, headers, metadata)
            metrics.FEED_PENDING.set(metadata.num_pending)
            if metadata.num_pending == 0:
                self._note_current()
                if not self.view.ready:
                    self._caught_up()
            elif metadata.timestamp is not None:  # behind: current as of this message
                age = max(0.0, time.time() - metadata.timestamp.timestamp())
                self._note_current(time.monotonic() - age)

        return on_message

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        description = headers.get(_DESCRIPTION, "")
        reply = msg.reply if description.startswith("Flow") else headers.get(_CONSUMER_STALLED)
        if reply and self._nc is not None:
            # Every earlier message has been applied (the callback runs them in order).
            with contextlib.suppress(*_TRANSIENT):
                await self._nc.publish(reply, b"")
        last = headers.get(_LAST_CONSUMER)
        if description.startswith("Idle") and last is not None and int(last) != self._next_dseq - 1:
            log.warning(
                "heartbeat reports delivery %s, we have %d; resyncing", last, self._next_dseq - 1
            )
            self._generation += 1
            self._need_sync.set()
        elif description.startswith("Idle") and self.view.ready:
            self._note_current()  # nothing missed, nothing pending: the view is current

    def _apply(self, facts: EventFacts, headers: dict[str, str] | None, metadata: Any) -> None:
        """Apply one change, in the trace of the call that made it when the message carries one
        (``traceparent``, set by the relay from the outbox row)."""
        traceparent = headers.get(tracing.TRACEPARENT) if headers else None
        with tracing.consumer_span(
            "availability apply", traceparent, {"slotlock.event_id": facts.event_id}
        ):
            if not self.view.apply(facts):
                return
        metrics.FEED_APPLIED.inc()
        if self.view.ready and metadata.timestamp is not None:  # a rebuild replays old ones
            metrics.FEED_DELAY.observe(max(0.0, time.time() - metadata.timestamp.timestamp()))

    def _caught_up(self) -> None:
        if not self.view.ready:
            metrics.VIEW_REBUILD_SECONDS.set(time.monotonic() - self._sync_started)
            log.info(
                "view rebuilt: %d events in %.3fs",
                len(self.view.views),
                time.monotonic() - self._sync_started,
            )
            self.view.mark_ready()

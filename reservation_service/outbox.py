"""The outbox relay: publishes committed outbox rows to JetStream in id order, then marks them.

- One relay at a time across replicas (session advisory lock); the others stand by, blocked in
  Postgres on that lock (idle, not polling), and take over as soon as it dies. With one relay,
  id order is per-event commit order.
- Woken in-process by this replica's commits, by NOTIFY from other replicas, and by a short poll.
- Publishes are pipelined (publish_async) and each carries ``Nats-Msg-Id`` = outbox id, so a
  re-publish after a crash between publish and mark is dropped by JetStream as a duplicate.
- When NATS is down, rows wait in the table; the first failure in a batch ends it, and the next
  attempt starts again from the first unmarked row, so per-event order survives outages.
- A row that no retry will publish (larger than the server's max_payload, refused by the stream
  as malformed) never stalls the rows behind it: it is set aside as a dead letter (its reason
  kept in the row, one ERROR logged, ``dead_lettered`` counted), its event's current state is
  published as a snapshot so consumers stay correct, and the relay goes on at once.
- After every reconnect to NATS, and whenever a publish finds no stream (NATS came back with an
  empty store, or the stream was deleted), the relay (re)creates the stream and starts a
  reconciliation pass at once, so events that stay quiet are back on the feed within seconds
  rather than at the next periodic pass. Every publish result is read, failed ones included.
- An outage is logged once when it starts and once when it ends (how long, how many attempts),
  not once per retry; nats-py's own error callback would log a traceback per reconnect attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import nats
import psycopg
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import BadRequestError, NotFoundError
from psycopg.rows import TupleRow, dict_row
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from reservation_service import sql
from reservation_service.convert import event_to_proto, timestamp
from reservation_service.db import Pool
from reservation_service.retention import Housekeeper, Retention
from reservation_service.rows import Row, event_from_row
from slotlock import metrics, tracing
from slotlock.feed import Feed
from slotlock.v1 import changes_pb2

log = logging.getLogger(__name__)

QUERIES = sql.queries("outbox.sql")
_FIRST_ID = "00000000-0000-0000-0000-000000000000"
RELAY_LOCK_KEY = 0x510710D
NOTIFY_CHANNEL = "slotlock_outbox"


def with_change_id(payload: bytes, change_id: int) -> bytes:
    """Set EventChange.change_id (field 1, varint) by appending it: protobuf parsers let the last
    occurrence of a scalar field win, so no decode and re-encode is needed."""
    out = bytearray(payload)
    out.append(0x08)  # field 1, wire type 0
    value = change_id
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class PublishFailed(Exception):
    pass


# Failures of one message that publishing it again cannot fix: nats-py refuses a payload over the
# server's max_payload before sending it, and JetStream answers 400 to a message it will never take.
UNPUBLISHABLE: tuple[type[Exception], ...] = (
    MaxPayloadError,
    BadSubjectError,
    BadHeaderError,
    BadRequestError,
)


class Unpublishable(PublishFailed):
    """The row ``change_id`` (of event ``event_id``) can never be published: set it aside."""

    def __init__(self, change_id: int, event_id: str, error: BaseException) -> None:
        self.change_id = change_id
        self.event_id = event_id
        self.reason = f"{type(error).__name__}: {error}"
        super().__init__(f"outbox row {change_id} cannot be published ({self.reason})")


class Outage:
    """One line when publishing starts failing, one when it works again (with how long and how
    many attempts failed), and DEBUG in between: an outage is news twice, not every 250 ms."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None  # monotonic start of the current outage
        self.failures = 0

    def failed(self, error: object) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s failing: %s; retrying quietly until it works again", self.what, error)
        else:
            log.debug("%s still failing: %s", self.what, error)

    def ended(self) -> None:
        if self.since is not None:
            log.warning(
                "%s working again after %.1f s (%d failed attempts)",
                self.what,
                time.monotonic() - self.since,
                self.failures,
            )
        self.since, self.failures = None, 0


class OutboxRelay:
    def __init__(
        self,
        pool: Pool,
        conninfo: str,
        nats_url: str,
        feed: Feed,
        *,
        batch: int = 1000,
        poll_s: float = 1.0,
        linger_s: float = 0.005,
        ack_timeout_s: float = 5.0,
        retention: Retention | None = None,
        reconcile_every_s: float = 300.0,
    ) -> None:
        self._pool = pool
        self._conninfo = conninfo
        self._nats_url = nats_url
        self._feed = feed
        self._batch = batch
        self._poll_s = poll_s
        self._linger_s = linger_s
        self._busy_rows = 20  # a round this large means the relay is under load
        self._ack_timeout_s = ack_timeout_s
        self.housekeeper = Housekeeper(pool, feed, retention or Retention())
        self._reconcile_every_s = reconcile_every_s
        self._next_reconcile = 0.0  # loop time; 0 = as soon as the outbox is drained
        self._reconcile_after = _FIRST_ID  # where the running reconciliation pass has got to
        self._wake = asyncio.Event()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self.published = 0  # count, for logs and tests
        self.dead_lettered = 0  # rows set aside by this relay (all of them: see dead_letters())
        self._traceparents: dict[int, str] = {}  # of the rows being published
        # Set on (re)connect and when a publish finds no stream: ensure the stream exists and
        # start a reconciliation pass before the next round (see the module docstring).
        self._resync = False
        self.resyncs = 0  # count, for logs and tests
        self._publishing = Outage("outbox relay: publishing to NATS")
        self._nats_link = Outage("outbox relay: connection to NATS")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            await self._connect_nats()
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    ) as lock_conn:
                        await self._wait_for_relay_lock(lock_conn)
                        log.info("outbox relay active")
                        await self._relay_while_locked(lock_conn)
                except (psycopg.OperationalError, OSError) as error:
                    log.warning("outbox relay lost the database: %s; retrying", error)
                    await asyncio.sleep(0.5)
                except Exception:  # a bug must not stop the relay for good: log it, go on
                    log.exception("outbox relay failed; restarting it in 1 s")
                    await asyncio.sleep(1.0)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

    async def _connect_nats(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_random_exponential(multiplier=0.1, max=2.0),
        ):
            with attempt:
                # pending_size=0: while disconnected, publishes fail at once instead of being
                # buffered and sent after reconnect ahead of earlier, lost ones.
                self._nc = nc = await nats.connect(
                    self._nats_url,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    pending_size=0,
                    allow_reconnect=True,
                    connect_timeout=2,
                    error_cb=self._on_nats_error,
                    disconnected_cb=self._on_nats_disconnected,
                    reconnected_cb=self._on_nats_reconnected,
                )
                self._js = nc.jetstream(timeout=self._ack_timeout_s)
                await self._feed.ensure_stream(self._js, apply_limits=True)

    async def _on_nats_error(self, error: Exception) -> None:
        self._nats_link.failed(f"{type(error).__name__}: {error}")

    async def _on_nats_disconnected(self) -> None:
        self._nats_link.failed("disconnected")

    async def _on_nats_reconnected(self) -> None:
        self._nats_link.ended()
        self._resync = True  # the server may have come back with an empty store
        self._wake.set()

    async def _resync_feed(self) -> None:
        """(Re)create the stream if it is missing, then reconcile from the first event now."""
        await self._feed.ensure_stream(self._jetstream(), apply_limits=True)
        self._resync = False
        self.resyncs += 1
        self._reconcile_after = _FIRST_ID
        self._next_reconcile = 0.0
        log.info("outbox relay: stream %s checked; reconciling the feed now", self._feed.stream)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:  # run() connects before it relays anything
            raise PublishFailed("not connected to NATS yet")
        return self._js

    async def _wait_for_relay_lock(self, lock_conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Return holding the relay lock. A standby waits inside Postgres (``pg_advisory_lock``
        blocks until the active relay's session ends): no polling, no wake-ups from commits, and
        it takes over the moment the active relay dies. (Polling ``pg_try_advisory_lock`` on each
        wake-up spun a core: commits kept setting the wake-up the standby never cleared.)"""
        row = await (
            await lock_conn.execute(QUERIES["try_relay_lock"], {"key": RELAY_LOCK_KEY})
        ).fetchone()
        if row and row[0]:
            return
        log.debug("outbox relay standing by (another relay holds the lock)")
        await lock_conn.execute(QUERIES["wait_relay_lock"], {"key": RELAY_LOCK_KEY})

    async def _relay_while_locked(self, lock_conn: psycopg.AsyncConnection[TupleRow]) -> None:
        purge_every = 600
        rounds = 0
        while True:
            self._wake.clear()
            if self._resync:
                try:
                    await self._resync_feed()
                except Exception as error:  # NATS went away again: the next round retries
                    self._publishing.failed(f"checking the stream: {error!r}")
                    await asyncio.sleep(0.25)
                    continue
            rows = await self._fetch_unpublished()
            if rows:
                try:
                    await self._publish_in_order(rows)
                except PublishFailed as error:
                    if isinstance(error, Unpublishable) and await self._set_aside(error):
                        continue  # the rows behind it go on at once
                    self._publishing.failed(error)
                    await asyncio.sleep(0.25)
                    continue
                self._publishing.ended()
                if len(rows) == self._batch:
                    continue  # more waiting: no sleep
            rounds += 1
            if rounds % purge_every == 0:
                await self._purge()
            if asyncio.get_running_loop().time() >= self._next_reconcile:
                await self._reconcile_or_retry_later()
            await lock_conn.execute("SELECT 1")  # notice a dead lock connection promptly
            await self._sleep_until_woken()
            if len(rows) >= self._busy_rows:
                # Under load, let the commits right behind this one join the next round: a few
                # ms of latency buy far fewer, larger rounds. When quiet, publish at once.
                await asyncio.sleep(self._linger_s)

    async def _fetch_unpublished(self) -> list[tuple[int, str, bytes]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["unpublished"], {"limit": self._batch})
            found = await cur.fetchall()
        # Sent on as each message's traceparent header (rows written with tracing on).
        self._traceparents = {int(r[0]): str(r[3]) for r in found if r[3]}
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in found]

    async def _publish_in_order(self, rows: Sequence[tuple[int, str, bytes]]) -> None:
        js = self._jetstream()
        futures: list[asyncio.Future[PubAck]] = []
        failure: BaseException | None = None
        failed_at = 0  # the index in ``rows`` of the row that failed, when one did
        for index, (change_id, event_id, payload) in enumerate(rows):
            try:
                futures.append(
                    await js.publish_async(
                        self._feed.subject_for(event_id),
                        with_change_id(payload, change_id),
                        headers=self._headers(change_id),
                        # No wait_stall: with one, every publish yields to the loop and the
                        # flusher writes each message on its own (a syscall per message).
                    )
                )
            except Exception as error:  # not connected, stalled: stop issuing, keep order
                failure, failed_at = error, index
                break
        acked: list[int] = []
        if futures:
            # One wait for the whole pipeline (not a timer per message): the relay's hot loop.
            _, late = await asyncio.wait(futures, timeout=self._ack_timeout_s)
            for future in late:
                future.cancel()
            for index, ((change_id, _, _), future) in enumerate(zip(rows, futures, strict=False)):
                problem = future.exception() if not future.cancelled() else TimeoutError("no ack")
                if problem is not None:  # the first row in order that failed is the one to judge
                    failure, failed_at = problem, index
                    break
                acked.append(change_id)
            for future in futures:  # read every result, so none is "never retrieved"
                if not future.cancelled():
                    future.exception()
        if acked:
            await self._mark_published(acked)
        if failure is not None:
            metrics.OUTBOX_PUBLISH_FAILURES.inc()
            if isinstance(failure, NoRespondersError):  # no stream takes the subject: recreate
                self._resync = True
            if isinstance(failure, UNPUBLISHABLE):
                change_id, event_id, _ = rows[failed_at]
                raise Unpublishable(change_id, event_id, failure) from failure
            raise PublishFailed(f"{type(failure).__name__}: {failure}") from failure

    def _headers(self, change_id: int) -> dict[str, str]:
        traceparent = self._traceparents.get(change_id)
        if traceparent is None:
            return {"Nats-Msg-Id": str(change_id)}
        return {"Nats-Msg-Id": str(change_id), tracing.TRACEPARENT: traceparent}

    async def _set_aside(self, stuck: Unpublishable) -> bool:
        """Publish the current state of the stuck row's event as a snapshot (consumers skip the
        versions it covers when the rows behind arrive), then mark the row dead-lettered, so the
        next round starts past it. False when NATS failed meanwhile: the next round finds the row
        again and does both again (a repeated snapshot is dropped by its Nats-Msg-Id)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(QUERIES["event_state"], {"id": stuck.event_id})
            row = await cur.fetchone()
        if row is not None:
            try:
                await self._publish_snapshot(self._jetstream(), row)
            except UNPUBLISHABLE as error:  # not expected of a snapshot; reconciliation retries
                log.error("outbox relay: no snapshot of event %s: %s", stuck.event_id, error)
            except Exception as error:
                log.warning("outbox relay: snapshot of event %s failed: %s", stuck.event_id, error)
                return False
        async with self._pool.connection() as conn:
            await conn.execute(
                QUERIES["dead_letter"], {"id": stuck.change_id, "reason": stuck.reason}
            )
        self.dead_lettered += 1
        log.error(
            "outbox relay: %s; set aside as a dead letter (outbox.dead_lettered_at), and event "
            "%s's current state published in its place",
            stuck,
            stuck.event_id,
        )
        return True

    async def dead_letters(self) -> list[tuple[int, str, str]]:
        """Every row set aside, oldest first: (outbox id, event id, reason)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["dead_letters"])
            return [(int(r[0]), str(r[1]), str(r[2])) for r in await cur.fetchall()]

    async def _mark_published(self, ids: list[int]) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(psycopg.OperationalError),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
        ):
            with attempt:
                async with self._pool.connection() as conn:
                    await conn.execute(QUERIES["mark_published"], {"ids": ids})
        self.published += len(ids)
        metrics.OUTBOX_PUBLISHED.inc(len(ids))

    async def _purge(self) -> None:
        try:
            await self.housekeeper.run_once(self._jetstream(), datetime.now(UTC))
        except Exception as error:  # NATS or the database went away: the next round retries
            log.warning("outbox relay: retention pass failed: %s", error)

    async def _reconcile_or_retry_later(self) -> None:
        """One page of the reconciliation pass per relay round, so a large catalog never holds
        up publishing for long."""
        loop = asyncio.get_running_loop()
        try:
            repaired, after = await self.reconcile_page(self._reconcile_after)
        except Exception as error:  # NATS or the database went away: try again soon
            self._publishing.failed(f"reconciliation: {error!r}")
            self._next_reconcile = loop.time() + 5.0
            return
        if repaired:
            log.warning("outbox relay: re-published the state of %d events", repaired)
        if after is None:  # the pass is complete
            self._reconcile_after = _FIRST_ID
            self._next_reconcile = loop.time() + self._reconcile_every_s
        else:
            self._reconcile_after = after

    async def reconcile_page(self, after: str, limit: int = 500) -> tuple[int, str | None]:
        """Postgres is the truth: re-publish the current state of each event (one page, by id)
        whose last message on the feed differs from the database. Behind: JetStream can lose
        acknowledged writes on power loss, and a stream can be recreated. Ahead (a version the
        database never wrote: a message forged by a client allowed to publish, or a database
        restored from a backup): consumers keep only newer versions, so a snapshot at the
        database's version would be ignored; the event's version jumps past the feed's first
        (``jump_version``) and the snapshot carries the new one, which every consumer, watcher
        and browser then takes by the usual rule, no special case anywhere. An undecodable last
        message counts as behind. Runs inside the relay loop, so no outbox publish interleaves
        with it and the feed's per-event order is kept. Returns how many it repaired and where
        the next page starts (None: the pass is complete)."""
        js = self._jetstream()
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                QUERIES["event_states"],
                {
                    "after": after,
                    "limit": limit,
                    # Past events' subjects are purged on purpose: not a loss to repair.
                    "started_after": self.housekeeper.retention.subject_horizon(datetime.now(UTC)),
                },
            )
            rows = await cur.fetchall()
        repaired = 0
        for row in rows:
            event = event_from_row(row)
            on_feed = await self._version_on_feed(js, event.id)
            if on_feed > event.version:
                async with self._pool.connection() as conn:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(QUERIES["jump_version"], {"id": event.id, "past": on_feed})
                    jumped = await cur.fetchone()
                if jumped is None:  # deleted meanwhile
                    continue
                log.warning(
                    "outbox relay: the feed holds version %d of event %s, the database %d: not "
                    "written here; the event's version moves to %d and its state is published",
                    on_feed,
                    event.id,
                    event.version,
                    jumped["version"],
                )
                await self._publish_snapshot(js, jumped)
                repaired += 1
                continue
            if on_feed == event.version:
                continue
            async with self._pool.connection() as conn:
                cur2 = await conn.execute(QUERIES["has_unpublished"], {"event_id": event.id})
                waiting = await cur2.fetchone()
            if waiting and waiting[0]:
                continue  # the outbox brings it, in order
            await self._publish_snapshot(js, row)
            repaired += 1
        return repaired, (str(rows[-1]["id"]) if len(rows) == limit else None)

    async def _publish_snapshot(self, js: JetStreamContext, row: Row) -> None:
        """The event of ``row`` (from the events table) as it is now, as a STATE_SNAPSHOT."""
        event = event_from_row(row)
        snapshot = changes_pb2.EventChange(
            type=changes_pb2.CHANGE_TYPE_STATE_SNAPSHOT,
            event=event_to_proto(event),
            occurred_at=timestamp(row["updated_at"]),
        )
        await js.publish(
            self._feed.subject_for(event.id),
            snapshot.SerializeToString(),
            headers={"Nats-Msg-Id": f"snapshot-{event.id}-{event.version}"},
        )

    async def _version_on_feed(self, js: JetStreamContext, event_id: str) -> int:
        try:
            msg = await js.get_last_msg(self._feed.stream, self._feed.subject_for(event_id))
        except NotFoundError:
            return 0
        if msg.data is None:
            return 0
        try:
            version: int = changes_pb2.EventChange.FromString(msg.data).event.version
        except DecodeError:  # not ours: consumers skip it, so the state before it stands
            log.warning("outbox relay: undecodable last message for event %s", event_id)
            return -1
        return version

    async def _sleep_until_woken(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)

    async def _listen(self) -> None:
        """NOTIFY from other replicas' commits wakes this relay (a hint; the poll is the floor)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.OperationalError, OSError):
                await asyncio.sleep(1.0)

"""The hub that fans updates out to watch streams.

Each watcher is a ``slotlock.conflation.Mailbox`` (a "latest per event" slot map and a wake-up,
not a queue): a slow watcher only ever gets the newest state of each event, never blocks the
feed, and holds at most one entry per watched event. Updates are built once by the caller and
the same object is handed to every watcher.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from slotlock import errors
from slotlock.conflation import Mailbox, is_newer

M = TypeVar("M")

# How a watch stream ends when this replica stops following the feed for watchers: UNAVAILABLE
# (clients retry it) with words that send them elsewhere.
SHUTTING_DOWN = "this replica is shutting down; reconnect (to another replica)"


class TooManyWatchers(errors.ResourceExhausted):
    """The watcher cap is reached; a client may retry later or on another replica."""

    reason = "TOO_MANY_WATCHERS"


@dataclass(frozen=True, slots=True)
class Update(Generic[M]):
    """One accepted change: its message, and that message already serialized (``payload``), so
    that fan-out writes the same bytes to every watcher instead of serializing per stream."""

    event_id: str
    version: int
    message: M
    payload: bytes = b""


class Watcher(Mailbox[str, Update[M]]):
    """One watch stream's mailbox: the latest update per event plus a wake-up."""

    __slots__ = ("close_reason", "event_ids")

    def __init__(self, event_ids: frozenset[str] | None) -> None:
        super().__init__()
        self.event_ids = event_ids  # None = every event
        self.close_reason = SHUTTING_DOWN

    async def next_batch(self, timeout: float | None = None) -> list[Update[M]]:
        """The updates waiting (after waiting for some); ``Unavailable`` once closed and drained,
        so the stream ends with a status the client retries on."""
        batch = await super().next_batch(timeout)
        if not batch and self.closed:
            raise errors.Unavailable(self.close_reason)
        return batch


class WatcherHub(Generic[M]):
    """Routes each update to the watchers of its event, in O(watchers of that event).

    Versions never go backwards on a stream: the hub remembers the newest version it has handed
    out per event and drops anything not newer (``slotlock.conflation.is_newer``), once per
    update rather than once per watcher."""

    def __init__(self, max_watchers: int) -> None:
        self.max_watchers = max_watchers
        self._all: set[Watcher[M]] = set()
        self._by_event: dict[str, set[Watcher[M]]] = {}
        self._versions: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def register(
        self, event_ids: Iterable[str] | None, initial: Iterable[Update[M]] = ()
    ) -> Watcher[M]:
        """A new watcher primed with ``initial`` (the current states it should see first).

        Synchronous on purpose: no update can slip between the snapshot and the registration."""
        if self._count >= self.max_watchers:
            raise TooManyWatchers(
                f"too many watchers on this replica ({self.max_watchers}); retry later"
            )
        ids = None if event_ids is None else frozenset(event_ids)
        watcher: Watcher[M] = Watcher(ids)
        for update in initial:
            self._note_version(update)
            watcher.offer(update.event_id, update)
        if ids is None:
            self._all.add(watcher)
        else:
            for event_id in ids:
                self._by_event.setdefault(event_id, set()).add(watcher)
        self._count += 1
        return watcher

    def unregister(self, watcher: Watcher[M]) -> None:
        """Forget ``watcher`` (idempotent); its slots are dropped with it."""
        watcher.close()
        if watcher.event_ids is None:
            if watcher in self._all:
                self._all.discard(watcher)
                self._count -= 1
            return
        removed = False
        for event_id in watcher.event_ids:
            group = self._by_event.get(event_id)
            if group is not None and watcher in group:
                group.discard(watcher)
                removed = True
                if not group:
                    del self._by_event[event_id]
        if removed:
            self._count -= 1

    def publish(self, update: Update[M]) -> bool:
        """Hand ``update`` to every interested watcher; False (and nobody gets it) when it is not
        newer than what was handed out. Never awaits, never blocks."""
        if not self._note_version(update):
            return False
        event_id = update.event_id
        for watcher in self._all:
            watcher.offer(event_id, update)
        group = self._by_event.get(event_id)
        if group:
            for watcher in group:
                watcher.offer(event_id, update)
        return True

    def _note_version(self, update: Update[M]) -> bool:
        if not is_newer(update.version, self._versions.get(update.event_id)):
            return False
        self._versions[update.event_id] = update.version
        return True

    def close_all(self, reason: str = SHUTTING_DOWN) -> None:
        """End every watch stream with UNAVAILABLE and ``reason``, once its mailbox is drained."""
        for watcher in list(self._all):
            watcher.close_reason = reason
            watcher.close()
        for group in list(self._by_event.values()):
            for watcher in list(group):
                watcher.close_reason = reason
                watcher.close()

"""The live view: event id -> current ``EventView`` and its wire message, plus the watcher hub.

The view is the availability side's application layer: it applies changes (through the pure
``projection.apply_change``) and answers every query (get, list, watch), so the servicer only
converts protobuf. An accepted change is converted to its wire message and serialized once, and
that object is what every reader and watcher gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from availability_service import convert, listing, projection
from availability_service.watchers import Update, Watcher, WatcherHub
from slotlock import errors
from slotlock.conflation import is_newer
from slotlock.v1 import availability_pb2

Message = availability_pb2.EventAvailability


class AvailabilityView:
    def __init__(self, policy: projection.BadgePolicy, max_watchers: int) -> None:
        self.policy = policy
        self.views: dict[str, projection.EventView] = {}
        self.messages: dict[str, Update[Message]] = {}
        self.hub: WatcherHub[Message] = WatcherHub(max_watchers)
        self._ready = asyncio.Event()
        self.applied = 0  # accepted changes; logs and tests read it
        # Why watches are refused right now (the feed is lost or behind), or None. Reads still
        # answer from the last known state; health says NOT_SERVING meanwhile.
        self.paused: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def apply(self, facts: projection.EventFacts) -> bool:
        """Apply one change; True if it was newer than what we held."""
        new_view = projection.apply_change(self.views.get(facts.event_id), facts, self.policy)
        if new_view is None:
            return False
        self.views[facts.event_id] = new_view
        message = convert.to_proto(new_view)
        update = Update(facts.event_id, facts.version, message, message.SerializeToString())
        self.messages[facts.event_id] = update
        self.applied += 1
        self.hub.publish(update)
        return True

    def require_ready(self) -> None:
        if not self.ready:
            raise errors.NotReady("the availability view is still being rebuilt; retry shortly")

    def get(self, event_id: str) -> Update[Message]:
        self.require_ready()
        update = self.messages.get(event_id)
        if update is None:
            raise errors.NotFound(
                f"no event with id {event_id}",
                reason="EVENT_NOT_FOUND",
                metadata={"event_id": event_id},
            )
        return update

    def list_events(
        self, filters: listing.Filters, page_size: int, page_token: str
    ) -> tuple[list[Message], str]:
        """One page of the events matching ``filters`` (by date, start time, code) and the token
        of the next page ("" on the last one)."""
        size = listing.page_size_of(page_size)
        # A bad token is refused even while rebuilding: retrying would not make it good.
        after = listing.decode_after(page_token, filters)
        self.require_ready()
        page = listing.list_page(self.views.values(), filters, size, after)
        messages = [self.messages[view.event_id].message for view in page.events]
        return messages, page.next_page_token

    def watch(
        self, event_ids: Iterable[str] | None, known_versions: Mapping[str, int]
    ) -> Watcher[Message]:
        """Register a watcher primed with the current state of each event it asks for, except
        those the client already holds at that version or newer."""
        self.require_ready()
        if self.paused is not None:  # a watch promises live updates: refuse, retry elsewhere
            raise errors.Unavailable(self.paused)
        if event_ids is None:
            candidates: Iterable[Update[Message]] = self.messages.values()
        else:
            ids = list(dict.fromkeys(event_ids))
            missing = [event_id for event_id in ids if event_id not in self.messages]
            if missing:
                raise errors.NotFound(
                    f"no event with id {', '.join(missing[:5])}", reason="EVENT_NOT_FOUND"
                )
            candidates = [self.messages[event_id] for event_id in ids]
        # An event missing from known_versions reads as version 0, the wire's "never seen".
        initial = (u for u in candidates if is_newer(u.version, known_versions.get(u.event_id, 0)))
        return self.hub.register(event_ids, initial)

    def unwatch(self, watcher: Watcher[Message]) -> None:
        """The watch stream ended (idempotent)."""
        self.hub.unregister(watcher)

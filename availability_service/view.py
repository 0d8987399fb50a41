"""The live view: event id -> current ``EventView`` and its wire message, plus the watcher hub.

Applying goes through the pure ``projection.apply_change``; an accepted change is converted to
its wire message once and that object is what every reader and watcher gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from availability_service import convert, projection
from availability_service.watchers import Update, Watcher, WatcherHub
from slotlock import errors
from slotlock.v1 import availability_pb2

Message = availability_pb2.EventAvailability


class AvailabilityView:
    def __init__(self, policy: projection.BadgePolicy, max_watchers: int) -> None:
        self.policy = policy
        self.views: dict[str, projection.EventView] = {}
        self.messages: dict[str, Update[Message]] = {}
        self.hub: WatcherHub[Message] = WatcherHub(max_watchers)
        self._ready = asyncio.Event()
        self.applied = 0
        self.ignored = 0

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
            self.ignored += 1
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
            raise errors.NotFound(f"no event with id {event_id}")
        return update

    def watch(
        self, event_ids: Iterable[str] | None, known_versions: Mapping[str, int]
    ) -> Watcher[Message]:
        """Register a watcher primed with the current state of each event it asks for, except
        those the client already holds at that version or newer."""
        self.require_ready()
        if event_ids is None:
            candidates: Iterable[Update[Message]] = self.messages.values()
        else:
            ids = list(dict.fromkeys(event_ids))
            missing = [event_id for event_id in ids if event_id not in self.messages]
            if missing:
                raise errors.NotFound(f"no event with id {', '.join(missing[:5])}")
            candidates = [self.messages[event_id] for event_id in ids]
        initial = (u for u in candidates if u.version > known_versions.get(u.event_id, 0))
        return self.hub.register(event_ids, initial)

"""The JetStream feed between the services: one stream, one subject per event.

The reservation service's outbox relay publishes ``slotlock.v1.EventChange`` messages here; the
availability service rebuilds from the last message of each subject and then follows the tail.
Both sides build the same ``Feed`` from their settings (``SLOTLOCK_STREAM``,
``SLOTLOCK_SUBJECT_PREFIX``), so several environments (or tests) can share one NATS server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_STREAM = "SLOTLOCK_EVENTS"
DEFAULT_SUBJECT_PREFIX = "slotlock.event"


@dataclass(frozen=True)
class Feed:
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    # Some history per event for debugging; the latest message alone carries the state.
    max_msgs_per_subject: int = 1000
    # JetStream drops a re-published Nats-Msg-Id seen within this window.
    duplicate_window_s: float = 120.0
    # Messages older than this leave the stream (0 = no age limit). Past events' subjects are
    # purged by the reservation service's relay (SLOTLOCK_STREAM_KEEP_PAST_EVENTS_S), which is
    # what keeps the stream small; an age limit must stay well above the relay's reconciliation
    # period, which re-publishes the state of any live event whose last message aged out.
    max_age_s: float = 0.0

    @property
    def all_subjects(self) -> str:
        return f"{self.subject_prefix}.*"

    def subject_for(self, event_id: str) -> str:
        return f"{self.subject_prefix}.{event_id}"

    def event_id_of(self, subject: str) -> str:
        return subject.rsplit(".", 1)[-1]

    async def ensure_stream(self, js: Any, *, apply_limits: bool = False) -> None:
        """Create the stream if it is missing (idempotent; both services call it at start).
        ``apply_limits``: also set this feed's age limit on an existing stream (the relay, which
        reads the retention settings, does; a stream created by the availability service first
        has none)."""
        import dataclasses

        from nats.js import api
        from nats.js.errors import NotFoundError

        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                api.StreamConfig(
                    name=self.stream,
                    subjects=[self.all_subjects],
                    storage=api.StorageType.FILE,
                    max_msgs_per_subject=self.max_msgs_per_subject,
                    duplicate_window=self.duplicate_window_s,
                    max_age=self.max_age_s if apply_limits else None,
                )
            )
            return
        if apply_limits and abs((info.config.max_age or 0.0) - self.max_age_s) > 0.001:
            await js.update_stream(dataclasses.replace(info.config, max_age=self.max_age_s))

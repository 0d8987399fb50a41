"""Readable names for service processes in ``ps`` and ``top`` (``slotlock-reservation worker 2/4
:50051``) instead of ``python -c ...``: an operator finds which process holds a port, and which
stack it belongs to, at a glance."""

from __future__ import annotations

import setproctitle


def set_title(service: str, port: int, detail: str = "") -> None:
    """Title this process ``<service> [detail] :<port>``."""
    setproctitle.setproctitle(" ".join(part for part in (service, detail, f":{port}") if part))

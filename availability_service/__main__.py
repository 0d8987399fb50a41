"""``python -m availability_service`` / ``slotlock-availability``: read settings, serve until
SIGTERM or SIGINT, then shut down cleanly."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings
from slotlock import logs, metrics, tracing
from slotlock import settings as slotlock_settings
from slotlock.process_title import set_title


async def serve(settings: Settings) -> None:
    server = await AvailabilityServer(settings).start()
    set_title("slotlock-availability", server.port)

    async def freeze_when_ready() -> None:
        # The rebuilt view is long-lived: keep the collector from re-scanning it on every pass
        # (a process-wide choice, hence here and not in the server tests also run in-process).
        await server.view.wait_ready()
        gc.freeze()

    freezer = asyncio.create_task(freeze_when_ready())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger(__name__).info("draining: NOT_SERVING, then calls in flight finish")
    freezer.cancel()
    await server.drain()


def main() -> None:
    settings = slotlock_settings.load("slotlock-availability", Settings.from_env, os.environ)
    logs.configure(settings.log_level, settings.telemetry.log_format)
    tracing.configure(settings.telemetry.otel_exporter, "slotlock-availability")
    try:
        metrics.serve(settings.host, settings.telemetry.metrics_port)
        asyncio.run(serve(settings))
    except OSError as error:  # a port taken, most often: one line, not a traceback
        print(f"slotlock-availability: cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        tracing.shutdown()  # send the spans still buffered


if __name__ == "__main__":
    main()

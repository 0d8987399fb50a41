"""`python -m reservation_service` (or `slotlock-reservation`): run one replica."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from reservation_service.server import serve
from reservation_service.settings import Settings
from slotlock.errors import SlotlockError


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except SlotlockError as error:
        print(f"slotlock-reservation: {error.message}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"slotlock-reservation: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""Operator commands: `slotlock watch`, `events`, `hold`, `confirm`, `release`.

Thin gRPC clients of the two services, for people at a terminal. Every failure (a bad argument, a
refusal from a service, a service that cannot be reached) ends as ONE readable line on stderr and a
non-zero exit code, never a traceback: 2 for bad arguments, 1 for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import grpc
from google.protobuf import timestamp_pb2

from slotlock import client
from slotlock.labels import short_name
from slotlock.tls import ClientTLS
from slotlock.v1 import availability_pb2, catalog_pb2, reservation_pb2

if TYPE_CHECKING:
    from slotlock.v1.reservation_pb2_grpc import ReservationServiceAsyncStub

DEFAULT_RESERVATION_ADDR = "127.0.0.1:50051"
DEFAULT_AVAILABILITY_ADDR = "127.0.0.1:50052"
BADGE_COLOURS = {
    "AVAILABLE": "32",  # green
    "FEW_LEFT": "33",  # amber
    "ALMOST_FULL": "1;38;5;208",  # bold orange: someone is paying right now
    "SOLD_OUT": "31",  # red
}
ORANGE = "38;5;208"
PAGE_SIZE = 500
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CommandError(Exception):
    """A failure to report as one line (the message) and exit code 1."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on a bad argument; operators asked for one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


# ---- argument types ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


# ---- registration -----------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--reservation-addr",
        type=_address,
        default=os.environ.get("SLOTLOCK_RESERVATION_ADDR") or DEFAULT_RESERVATION_ADDR,
        metavar="HOST:PORT",
        help="reservation service (default: $SLOTLOCK_RESERVATION_ADDR or %(default)s)",
    )
    common.add_argument(
        "--availability-addr",
        type=_address,
        default=os.environ.get("SLOTLOCK_AVAILABILITY_ADDR") or DEFAULT_AVAILABILITY_ADDR,
        metavar="HOST:PORT",
        help="availability service (default: $SLOTLOCK_AVAILABILITY_ADDR or %(default)s)",
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each call (default: %(default)s)",
    )
    # The caller's credential and the services' CA (`slotlock dev` prints ready values).
    common.add_argument(
        "--auth-token",
        default=os.environ.get("SLOTLOCK_TOKEN", ""),
        metavar="JWT",
        help="signed token with your roles (default: $SLOTLOCK_TOKEN)",
    )
    common.add_argument(
        "--ca-file",
        default=os.environ.get("SLOTLOCK_TLS_CA_FILE", ""),
        metavar="PEM",
        help="CA of the services' TLS certificates; unset = plain text "
        "(default: $SLOTLOCK_TLS_CA_FILE)",
    )
    common.add_argument(
        "--client-cert",
        default=os.environ.get("SLOTLOCK_TLS_CLIENT_CERT_FILE", ""),
        metavar="PEM",
        help="client certificate, where the services require one (mutual TLS; default: "
        "$SLOTLOCK_TLS_CLIENT_CERT_FILE)",
    )
    common.add_argument(
        "--client-key",
        default=os.environ.get("SLOTLOCK_TLS_CLIENT_KEY_FILE", ""),
        metavar="PEM",
        help="key of --client-cert (default: $SLOTLOCK_TLS_CLIENT_KEY_FILE)",
    )
    exits = (
        "Exit status: 0 on success, 1 when a service refuses or cannot be reached, "
        "2 on bad arguments."
    )

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog=exits,
        )
        parser.__class__ = _OneLineParser
        return parser

    watch = add(
        "watch",
        "show live availability in the terminal",
        "Show every event's seats (paid, being processed, available) and its badge, refreshed in "
        "place as holds are placed, paid and released. Reconnects by itself if the availability "
        "service restarts. Ctrl-C to stop.",
    )
    watch.add_argument(
        "--once", action="store_true", help="print one snapshot and exit (for scripts and tests)"
    )
    watch.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="EVENT_ID",
        help="only this event (repeatable; default: every event)",
    )
    watch.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the badges (default: auto, i.e. on a terminal unless $NO_COLOR is set)",
    )
    watch.set_defaults(handler=_guarded(run_watch, "availability"))

    events = add(
        "events",
        "list events with their seat counters",
        "List events known to the reservation service (the source of truth), with capacity and "
        "paid / pending / available seats.",
    )
    events.add_argument("--from-date", default="", metavar="YYYY-MM-DD", help="first date shown")
    events.add_argument("--to-date", default="", metavar="YYYY-MM-DD", help="last date shown")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(handler=_guarded(run_events, "reservation"))

    hold = add(
        "hold",
        "hold seats on an event",
        "Place a hold on seats of an event, as a buyer would. Prints the reservation id, the hold "
        "token (needed to confirm or release it) and when the hold expires.",
    )
    hold.add_argument("event", metavar="EVENT_ID_OR_CODE", help="the event's id or code")
    hold.add_argument(
        "--quantity", "-n", type=_positive_int, required=True, metavar="N", help="seats to hold"
    )
    hold.add_argument(
        "--ticket-type",
        choices=tuple(client.TICKET_TYPES),
        default="dinner",
        help="ticket type (default: %(default)s)",
    )
    hold.add_argument("--customer-ref", default="operator", help="who the hold is for")
    hold.add_argument(
        "--idempotency-key", default="", help="retry-safe key (default: a new one per call)"
    )
    hold.add_argument("--json", action="store_true", help="print the result as JSON")
    hold.set_defaults(handler=_guarded(run_hold, "reservation"))

    confirm = add(
        "confirm",
        "confirm (pay) a held reservation",
        "Mark a PENDING hold as paid, as the payment callback would.",
    )
    confirm.add_argument("reservation", metavar="RES_ID", help="the reservation id")
    confirm.add_argument("--token", required=True, help="the hold token `slotlock hold` printed")
    confirm.add_argument(
        "--payment-reference", default="", help="the payment's reference (default: generated)"
    )
    confirm.add_argument("--json", action="store_true", help="print the result as JSON")
    confirm.set_defaults(handler=_guarded(run_confirm, "reservation"))

    release = add(
        "release",
        "release a held reservation",
        "Give a PENDING hold's seats back before it expires.",
    )
    release.add_argument("reservation", metavar="RES_ID", help="the reservation id")
    release.add_argument("--token", required=True, help="the hold token `slotlock hold` printed")
    release.add_argument("--json", action="store_true", help="print the result as JSON")
    release.set_defaults(handler=_guarded(run_release, "reservation"))


Command = Callable[[argparse.Namespace, client.Services], Awaitable[int]]


def _guarded(run: Command, service: str) -> Callable[[argparse.Namespace], int]:
    """Run the command with both services' stubs; failures become one line on stderr (naming
    ``service``, the one the command talks to, and its address); Ctrl-C exits quietly."""

    async def with_services(args: argparse.Namespace) -> int:
        security = client.ClientSecurity(
            token=args.auth_token,
            tls=ClientTLS(
                ca_file=args.ca_file, cert_file=args.client_cert, key_file=args.client_key
            ),
        )
        async with client.Services(
            args.reservation_addr, args.availability_addr, security=security
        ) as services:
            return await run(args, services)

    def handler(args: argparse.Namespace) -> int:
        prog = f"slotlock {args.command}"
        try:
            return asyncio.run(with_services(args))
        except CommandError as error:
            print(f"{prog}: {error}", file=sys.stderr)
        except grpc.RpcError as error:
            address = args.reservation_addr if service == "reservation" else args.availability_addr
            reason = client.describe_error(error, service, address=address, timeout_s=args.timeout)
            print(f"{prog}: {reason}{_credential_hint(error)}", file=sys.stderr)
        except OSError as error:  # a CA or certificate file that cannot be read
            print(f"{prog}: {error}", file=sys.stderr)
        except KeyboardInterrupt:
            return 130
        except Exception as error:  # the promise is one line, whatever happens
            print(f"{prog}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    return handler


def _credential_hint(error: grpc.RpcError) -> str:
    """What to set when the refusal is about credentials (the commonest first-run mistake)."""
    code, _ = client.status_of(error)
    # (A plain-text call to a TLS service fails as "not reachable", like a stopped one: gRPC
    # cannot tell them apart, and that line is kept exact for scripts.)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "; set SLOTLOCK_TOKEN (or --auth-token) to a token `slotlock dev` printed"
    return ""


# ---- events, hold, confirm, release ------------------------------------------------------------


async def run_events(args: argparse.Namespace, services: client.Services) -> int:
    pages = client.paginate(
        services.reservations.ListEvents,
        reservation_pb2.ListEventsRequest(
            from_date=args.from_date, to_date=args.to_date, page_size=PAGE_SIZE
        ),
        lambda reply: reply.events,
        timeout=args.timeout,
    )
    events: list[catalog_pb2.Event] = [event async for event in pages]
    if args.json:
        for event in events:
            print(json.dumps(_event_json(event)))
        return 0
    if not events:
        print("no events")
        return 0
    rows = [
        [
            e.code,
            e.local_date,
            e.local_start_time,
            e.experience_title,
            str(e.capacity),
            str(e.paid),
            str(e.pending),
            str(e.available),
            short_name(catalog_pb2.EventStatus, e.status, "UNSPECIFIED"),
            e.id,
        ]
        for e in events
    ]
    headers = ["CODE", "DATE", "TIME", "TITLE", "CAP", "PAID", "PENDING", "AVAIL", "STATUS", "ID"]
    print(format_table(headers, rows))
    return 0


def _event_json(e: catalog_pb2.Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "code": e.code,
        "title": e.experience_title,
        "local_date": e.local_date,
        "local_start_time": e.local_start_time,
        "capacity": e.capacity,
        "paid": e.paid,
        "pending": e.pending,
        "available": e.available,
        "status": short_name(catalog_pb2.EventStatus, e.status, "UNSPECIFIED"),
        "version": e.version,
    }


async def _resolve_event(stub: ReservationServiceAsyncStub, ref: str, timeout: float) -> str:
    """An event id from an id or a code (codes are what people type)."""
    try:
        uuid.UUID(ref)
    except ValueError:
        pass
    else:
        return ref
    pages = client.paginate(
        stub.ListEvents,
        reservation_pb2.ListEventsRequest(page_size=PAGE_SIZE),
        lambda reply: reply.events,
        timeout=timeout,
    )
    async for event in pages:
        if event.code == ref:
            event_id: str = event.id
            return event_id
    raise CommandError(f"no event has the id or code {ref!r} (see `slotlock events`)")


def _timestamp(ts: timestamp_pb2.Timestamp) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z"))


def _reservation_json(r: catalog_pb2.Reservation) -> dict[str, Any]:
    return {
        "reservation_id": r.id,
        "event_id": r.event_id,
        "quantity": r.quantity,
        "status": short_name(catalog_pb2.ReservationStatus, r.status, "UNSPECIFIED"),
        "expires_at": _timestamp(r.expires_at) if r.HasField("expires_at") else None,
        "payment_reference": r.payment_reference or None,
        "payment_grace_until": (
            _timestamp(r.payment_grace_until) if r.HasField("payment_grace_until") else None
        ),
        "paid_late": r.paid_late,
        "refunded_quantity": r.refunded_quantity,
        "extensions": r.extensions,
    }


async def run_hold(args: argparse.Namespace, services: client.Services) -> int:
    stub = services.reservations
    event_id = await _resolve_event(stub, args.event, args.timeout)
    reply: reservation_pb2.CreateHoldResponse = await stub.CreateHold(
        reservation_pb2.CreateHoldRequest(
            event_id=event_id,
            quantity=args.quantity,
            ticket_type=client.TICKET_TYPES[args.ticket_type],
            customer_ref=args.customer_ref,
            idempotency_key=args.idempotency_key or str(uuid.uuid4()),
        ),
        timeout=args.timeout,
    )
    body = {**_reservation_json(reply.reservation), "hold_token": reply.hold_token}
    if args.json:
        print(json.dumps(body))
        return 0
    expires = body["expires_at"]
    if expires:
        left = reply.reservation.expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
        expires = f"{expires} (in {max(0, round(left.total_seconds()))}s)"
    print(f"reservation  {body['reservation_id']}")
    print(f"hold_token   {body['hold_token']}")
    print(f"quantity     {body['quantity']}")
    print(f"status       {body['status']}")
    print(f"expires_at   {expires}")
    return 0


async def run_confirm(args: argparse.Namespace, services: client.Services) -> int:
    reference = args.payment_reference or f"CLI-{uuid.uuid4().hex[:12].upper()}"
    reservation: catalog_pb2.Reservation = await services.reservations.ConfirmHold(
        reservation_pb2.ConfirmHoldRequest(
            reservation_id=args.reservation,
            hold_token=args.token,
            payment_reference=reference,
        ),
        timeout=args.timeout,
    )
    return _print_reservation(reservation, args.json)


async def run_release(args: argparse.Namespace, services: client.Services) -> int:
    reservation: catalog_pb2.Reservation = await services.reservations.ReleaseHold(
        reservation_pb2.ReleaseHoldRequest(reservation_id=args.reservation, hold_token=args.token),
        timeout=args.timeout,
    )
    return _print_reservation(reservation, args.json)


def _print_reservation(reservation: catalog_pb2.Reservation, as_json: bool) -> int:
    body = _reservation_json(reservation)
    if as_json:
        print(json.dumps(body))
        return 0
    line = f"reservation {body['reservation_id']} is {body['status']} ({body['quantity']} seats"
    if body["payment_reference"]:
        line += f", payment reference {body['payment_reference']}"
    if body["paid_late"]:
        line += ", paid after the hold lapsed"
    if body["refunded_quantity"]:
        line += f", {body['refunded_quantity']} of {body['quantity']} seats refunded"
    if body["payment_grace_until"]:
        line += f", payment in progress until {body['payment_grace_until']}"
    if body["status"] == "PAYMENT_TO_REFUND":
        line += ", late payment to refund"
    print(line + ")")
    return 0


# ---- watch --------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell; ANSI colour codes take no width."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(ANSI.sub("", row[i])) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [
            cell + " " * (width - len(ANSI.sub("", cell)))
            for cell, width in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _paint(text: str, colour: str, enabled: bool) -> str:
    return f"\x1b[{colour}m{text}\x1b[0m" if enabled and colour else text


def availability_table(events: Iterable[availability_pb2.EventAvailability], colour: bool) -> str:
    rows = []
    ordered = sorted(events, key=lambda e: (e.local_date, e.local_start_time, e.code))
    for e in ordered:
        badge = short_name(availability_pb2.Badge, e.badge, "-")
        pending = str(e.pending)
        rows.append(
            [
                e.code or e.event_id,
                f"{e.local_date} {e.local_start_time}".strip(),
                str(e.paid),
                _paint(pending, ORANGE, colour and e.pending > 0),
                str(e.available),
                _paint(badge, BADGE_COLOURS.get(badge, ""), colour),
            ]
        )
    if not rows:
        return "no events"
    headers = ["EVENT", "WHEN", "PAID", "BEING PROCESSED", "AVAILABLE", "BADGE"]
    return format_table(headers, rows)


class _Screen:
    """Redraws the table in place on a terminal; elsewhere prints one line per change."""

    def __init__(self, out: TextIO, colour: bool, address: str) -> None:
        self.out = out
        self.tty = out.isatty()
        self.colour = colour
        self.address = address
        self.status = "live"

    def draw(
        self,
        events: dict[str, availability_pb2.EventAvailability],
        changed: availability_pb2.EventAvailability | None,
    ) -> None:
        if not self.tty:
            if changed is not None:
                self.out.write(_change_line(changed) + "\n")
            self.out.flush()
            return
        now = datetime.now().strftime("%H:%M:%S")
        status = _paint(self.status, "32" if self.status == "live" else "33", self.colour)
        header = f"slotlock watch — {self.address} — {status} — {now}  (Ctrl-C to stop)"
        # Home, draw, clear what is left of the previous frame.
        body = availability_table(events.values(), self.colour).replace("\n", "\x1b[K\n")
        self.out.write(f"\x1b[H{header}\x1b[K\n\x1b[K\n{body}\x1b[K\n\x1b[J")
        self.out.flush()


def _change_line(e: availability_pb2.EventAvailability) -> str:
    stamp = datetime.now().strftime("%H:%M:%S")
    badge = short_name(availability_pb2.Badge, e.badge, "-")
    return (
        f"{stamp} {e.code or e.event_id} paid={e.paid} being_processed={e.pending} "
        f"available={e.available} badge={badge} version={e.version}"
    )


async def run_watch(args: argparse.Namespace, services: client.Services) -> int:
    colour = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    wanted = set(args.event)
    pages = client.paginate(
        services.availability.ListAvailability,
        availability_pb2.ListAvailabilityRequest(page_size=PAGE_SIZE),
        lambda reply: reply.events,
        timeout=args.timeout,
    )
    snapshot = [e async for e in pages if not wanted or e.event_id in wanted]
    if args.once:
        print(availability_table(snapshot, colour))
        return 0
    events = {e.event_id: e for e in snapshot}
    screen = _Screen(sys.stdout, colour, args.availability_addr)
    if screen.tty:
        sys.stdout.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
    else:
        print(availability_table(snapshot, colour=False), flush=True)
    try:
        await _follow(services, events, wanted, screen, args.timeout)
    finally:
        if screen.tty:
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()
    return 0


async def _follow(
    services: client.Services,
    events: dict[str, availability_pb2.EventAvailability],
    wanted: set[str],
    screen: _Screen,
    timeout: float,
) -> None:
    """Follow WatchAvailability until Ctrl-C; the client's watch reconnects with backoff and
    resumes from the versions already shown. Off a terminal, the feed's ups and downs are
    reported on stderr as ``#`` lines, apart from the change lines on stdout."""

    def on_status(live: bool, reason: str) -> None:
        was_live = screen.status == "live"
        if live and was_live:
            return
        screen.status = "live" if live else f"reconnecting ({reason})"
        if not screen.tty and live != was_live:
            note = "# live again" if live else f"# reconnecting ({reason})"
            print(note, file=sys.stderr, flush=True)
        screen.draw(events, None)

    watch = client.AvailabilityWatch(
        services.availability,
        services.availability_health,
        event_ids=sorted(wanted),
        known_versions={event_id: e.version for event_id, e in events.items()},
        check_timeout_s=timeout,
        on_status=on_status,
    )
    screen.draw(events, None)
    async for update in watch:
        events[update.event_id] = update
        screen.draw(events, update)

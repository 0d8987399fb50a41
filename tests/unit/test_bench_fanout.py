"""The lean watcher client of ``slotlock bench fanout`` reads HTTP/2 as the service writes it,
and the delivery report splits each change's latency into the first and the last watcher."""

from __future__ import annotations

from typing import Any

from slotlock_cli.bench import fanout


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def connection(received: list[tuple[int, bytes]]) -> tuple[fanout.RawWatchConnection, Transport]:
    def on_message(number: int, payload: bytes, now: float) -> None:
        received.append((number, payload))

    protocol = fanout.RawWatchConnection("127.0.0.1:1", b"req", [10, 11, 12], on_message)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_opens_one_stream_per_watcher_with_its_request() -> None:
    _, transport = connection([])
    sent = transport.written[0]
    assert sent.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert sent.count(b"/slotlock.v1.AvailabilityService/WatchAvailability") == 3
    assert sent.count(message(b"req")) == 3


def test_messages_reach_their_watcher_however_the_bytes_are_cut() -> None:
    received: list[tuple[int, bytes]] = []
    protocol, transport = connection(received)
    data = (
        fanout._frame(fanout._DATA, 0, 1, message(b"abc"))
        + fanout._frame(fanout._DATA, 0, 3, message(b"de") + message(b"fg"))  # two in one
        + fanout._frame(fanout._DATA, 0, 5, message(b"hijk")[:6])  # split over two frames
        + fanout._frame(fanout._DATA, 0, 5, message(b"hijk")[6:])
        + fanout._frame(fanout._PING, 0, 0, b"12345678")
        + fanout._frame(fanout._SETTINGS, 0, 0, b"")
    )
    for cut in (5, 12, 30, 44):  # arbitrary reads
        protocol.data_received(data[:cut])
        data = data[cut:]
    protocol.data_received(data)
    assert received == [(10, b"abc"), (11, b"de"), (11, b"fg"), (12, b"hijk")]
    acks = transport.written[1:]
    assert fanout._frame(fanout._PING, fanout._ACK, 0, b"12345678") in acks
    assert fanout._frame(fanout._SETTINGS, fanout._ACK, 0, b"") in acks
    assert protocol.failures == []


def test_a_stream_ended_by_the_server_is_a_failure() -> None:
    protocol, _ = connection([])
    protocol.data_received(fanout._frame(fanout._RST_STREAM, 0, 3, b"\x00\x00\x00\x08"))
    protocol.data_received(fanout._frame(fanout._HEADERS, fanout._END_STREAM | 0x4, 1, b""))
    assert len(protocol.failures) == 2


def test_deliveries_count_conflated_states_and_split_first_and_last() -> None:
    times = [1.0, 2.0]
    seen = [
        [(1, 1.010), (2, 2.020)],
        [(2, 2.050)],  # change 1 conflated into 2: both delivered at 2.050
    ]
    report: dict[str, Any] = fanout.deliveries(seen, times, ["x"])
    assert report["delivered"] == 4
    assert sorted(report["latencies_ms"]) == [10.0, 20.0, 50.0, 1050.0]
    assert report["first_ms"] == [10.0, 20.0]
    assert report["last_ms"] == [1050.0, 50.0]
    assert report["failures"] == 1

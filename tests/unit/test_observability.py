"""Pure parts of operations: the log formats, the telemetry settings, the reasons every error
carries and the google.rpc details built from them."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from reservation_service import errors as reservation_errors
from slotlock import errors, grpc_errors, logs
from slotlock.settings import Reader, SettingsError, Telemetry, read_telemetry


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("slotlock.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_the_request_id_and_fields() -> None:
    token = logs.request_id.set("req-1")
    try:
        line = logs.JsonFormatter().format(record("CreateHold failed", fields={"code": "X"}))
    finally:
        logs.request_id.reset(token)
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "slotlock.test"
    assert parsed["message"] == "CreateHold failed"
    assert parsed["request_id"] == "req-1"
    assert parsed["code"] == "X"
    assert parsed["time"].endswith("Z")


def test_json_keeps_a_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_console_lines_are_readable() -> None:
    line = logs.ConsoleFormatter().format(record("hello", request_id="r9", fields={"code": "OK"}))
    assert line.endswith("WARNING slotlock.test: hello [r9] code=OK")


def test_configure_replaces_the_root_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        logs.configure("INFO", "json", stream=out)
        logging.getLogger("slotlock.x").info("one line")
        assert json.loads(out.getvalue())["message"] == "one line"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_telemetry_settings() -> None:
    assert read_telemetry(Reader({}), "SLOTLOCK_RESERVATION_METRICS_PORT") == Telemetry()
    env = {
        "SLOTLOCK_RESERVATION_METRICS_PORT": "9151",
        "SLOTLOCK_LOG_FORMAT": "Console",
        "SLOTLOCK_OTEL_EXPORTER": "otlp",
    }
    assert read_telemetry(Reader(env), "SLOTLOCK_RESERVATION_METRICS_PORT") == Telemetry(
        metrics_port=9151, log_format="console", otel_exporter="otlp"
    )
    with pytest.raises(SettingsError, match="SLOTLOCK_OTEL_EXPORTER must be one of none, console"):
        read_telemetry(Reader({"SLOTLOCK_OTEL_EXPORTER": "jaeger"}), "X")
    with pytest.raises(SettingsError, match="SLOTLOCK_LOG_FORMAT"):
        read_telemetry(Reader({"SLOTLOCK_LOG_FORMAT": "xml"}), "X")


def all_subclasses(kind: type) -> list[type]:
    found = []
    for sub in kind.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


def test_every_error_class_names_its_own_stable_reason() -> None:
    import reservation_service.errors  # noqa: F401  # registers the domain errors

    reasons: dict[str, type] = {}
    for kind in all_subclasses(errors.SlotlockError):
        reason = kind.reason
        assert reason.isupper() and " " not in reason, kind
        if kind.__module__.startswith(("slotlock", "reservation_service", "availability")):
            assert reasons.setdefault(reason, kind) is kind, f"{kind} reuses {reason}"


def decode(raw: bytes) -> tuple[status_pb2.Status, dict[str, object]]:
    status = status_pb2.Status.FromString(raw)
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return status, found


def test_not_enough_seats_details() -> None:
    error = reservation_errors.NotEnoughSeats(requested=4, remaining=1)
    status, found = decode(grpc_errors.status_details(error, grpc.StatusCode.FAILED_PRECONDITION))
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert status.message == error.message
    info = found["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("NOT_ENOUGH_SEATS", "slotlock")
    assert dict(info.metadata) == {"seats_left": "1", "seats_requested": "4"}
    assert "BadRequest" not in found


def test_invalid_field_details_name_the_field() -> None:
    error = reservation_errors.InvalidField("quantity", "must be at least 1, got 0")
    _, found = decode(grpc_errors.status_details(error, grpc.StatusCode.INVALID_ARGUMENT))
    bad = found["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    [violation] = bad.field_violations
    assert violation.field == "quantity"
    assert violation.description == "quantity: must be at least 1, got 0"


def test_hold_expired_reason() -> None:
    _, found = decode(
        grpc_errors.status_details(
            reservation_errors.HoldExpired(), grpc.StatusCode.FAILED_PRECONDITION
        )
    )
    info = found["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "HOLD_EXPIRED"


def test_the_sample_dashboard_reads_only_series_slotlock_exports() -> None:
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    from slotlock import metrics  # noqa: F401  # registers every series

    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy" / "grafana" / "slotlock-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\b((?:grpc_server|slotlock)_\w+)", expr)
    }
    exported = {
        sample.name.removesuffix("_total")
        for family in REGISTRY.collect()
        for sample in family.samples
    } | {family.name for family in REGISTRY.collect()}
    exported |= {f"{name}_total" for name in exported}
    assert used, "no expressions found"
    assert used <= exported, used - exported

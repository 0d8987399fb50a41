"""Request size limits, read from the contract (``(slotlock.v1.bounds)`` options in protos/) and
checked by the error interceptor before any handler runs.

Every string, repeated and map field of a request carries a bound, so one oversized or NUL-laden
field is refused at the door with INVALID_ARGUMENT naming it: it never reaches Postgres (which
cannot store NUL), a batch of other buyers' holds, an outbox row, or a listing that everyone
reads. ``tests/unit/test_bounds.py`` checks that no request field lacks a bound.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from slotlock.errors import InvalidRequest
from slotlock.v1 import bounds_pb2


@dataclass(frozen=True)
class FieldRule:
    name: str
    max_length: int  # characters of a string, or of each string of a repeated field / map key
    max_items: int  # entries of a repeated field or map
    is_repeated: bool  # a repeated field or a map
    is_string: bool
    is_message: bool
    is_map: bool


def bounds_of(field: FieldDescriptor) -> bounds_pb2.FieldBounds:
    options = field.GetOptions()
    bounds: bounds_pb2.FieldBounds = options.Extensions[bounds_pb2.bounds]
    return bounds


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return is_repeated(field) and message_type is not None and message_type.GetOptions().map_entry


@functools.cache
def rules_for(descriptor: Descriptor) -> tuple[FieldRule, ...]:
    """The checks for one message type, built once from its descriptor."""
    rules = []
    for field in descriptor.fields:
        bounds = bounds_of(field)
        mapped = is_map(field)
        entry = field.message_type
        key_is_string = (
            mapped
            and entry is not None
            and entry.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
        )
        rules.append(
            FieldRule(
                name=field.name,
                max_length=bounds.max_length,
                max_items=bounds.max_items,
                is_repeated=is_repeated(field),
                is_string=field.type == FieldDescriptor.TYPE_STRING or key_is_string,
                is_message=field.type == FieldDescriptor.TYPE_MESSAGE and not mapped,
                is_map=mapped,
            )
        )
    return tuple(rules)


def check_request(message: Message) -> None:
    """Raise ``InvalidRequest`` naming the first field that breaks its bound. A field without a
    bound (only outside slotlock.v1, e.g. the health service's) is checked for NUL alone."""
    _check(message, "")


def _check(message: Message, prefix: str) -> None:
    for rule in rules_for(message.DESCRIPTOR):
        value = getattr(message, rule.name)
        path = prefix + rule.name
        if rule.is_repeated:
            if rule.max_items and len(value) > rule.max_items:
                raise InvalidRequest(
                    f"{path}: at most {rule.max_items:,} entries, got {len(value):,}",
                    field=path,
                    reason="FIELD_TOO_LONG",
                )
            items = value.keys() if rule.is_map else value
            if rule.is_string:
                for item in items:
                    _check_text(item, rule, f"{path} entry")
            elif rule.is_message:
                for item in items:
                    _check(item, f"{path}.")
        elif rule.is_string:
            _check_text(value, rule, path)
        elif rule.is_message and message.HasField(rule.name):
            _check(value, f"{path}.")


def _check_text(value: str, rule: FieldRule, path: str) -> None:
    if rule.max_length and len(value) > rule.max_length:
        raise InvalidRequest(
            f"{path}: at most {rule.max_length:,} characters, got {len(value):,}",
            field=path.removesuffix(" entry"),
            reason="FIELD_TOO_LONG",
        )
    if "\x00" in value:
        raise InvalidRequest(
            f"{path}: must not contain NUL characters",
            field=path.removesuffix(" entry"),
            reason="NUL_CHARACTER",
        )


def unbounded_fields(descriptor: Descriptor, seen: Mapping[str, bool] | None = None) -> list[str]:
    """Fields of ``descriptor`` (and the messages inside it) that lack a bound they need."""
    found: list[str] = []
    visited: dict[str, bool] = dict(seen or {})
    _collect_unbounded(descriptor, visited, found)
    return found


def _collect_unbounded(descriptor: Descriptor, visited: dict[str, bool], found: list[str]) -> None:
    if descriptor.full_name in visited:
        return
    visited[descriptor.full_name] = True
    for rule, field in zip(rules_for(descriptor), descriptor.fields, strict=True):
        name = f"{descriptor.full_name}.{field.name}"
        if rule.is_repeated and not rule.max_items:
            found.append(f"{name} (max_items)")
        if rule.is_string and not rule.max_length:
            found.append(f"{name} (max_length)")
        inner = field.message_type
        if rule.is_message and inner is not None and inner.file.package == "slotlock.v1":
            _collect_unbounded(inner, visited, found)


def markdown_table(services: list[ServiceDescriptor]) -> str:
    """The bounds of every request field of ``services``, as the README lists them."""
    lines = ["| field | at most |", "|---|---|"]
    visited: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in visited:
            return
        visited.add(descriptor.full_name)
        for field in descriptor.fields:
            limits = bounds_of(field)
            parts = []
            if limits.max_items:
                parts.append(f"{limits.max_items:,} entries")
            if limits.max_length:
                each = " each" if limits.max_items else ""
                parts.append(f"{limits.max_length:,} characters{each}")
            if parts:
                lines.append(f"| `{descriptor.name}.{field.name}` | {', '.join(parts)} |")
            inner = field.message_type
            if inner is not None and inner.file.package == "slotlock.v1" and not is_map(field):
                walk(inner)

    for service in services:
        for method in service.methods:
            walk(method.input_type)
    return "\n".join(lines) + "\n"

"""A small JSON Schema validator: the keywords answers to a structured-output canary need.

Supported: type, properties, required, additionalProperties, items, minItems, maxItems, enum,
const, minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern,
and boolean schemas; annotations ($schema, $id, $comment, title, description, examples,
default) are ignored. Any other keyword (format, $ref, anyOf, ...) is refused when the schema
is compiled: ignoring it would check less than the golden file says. Semantics follow JSON
Schema 2020-12: a keyword only constrains values of its own type, 1.0 is an integer, true is
not a number, and enum/const compare as JSON (1 equals 1.0, true does not equal 1).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples",
                         "default"})  # fmt: skip
_COUNTS = {"minLength": "min_length", "maxLength": "max_length", "minItems": "min_items",
           "maxItems": "max_items"}  # fmt: skip
_BOUNDS = {"minimum": "minimum", "maximum": "maximum", "exclusiveMinimum": "exclusive_minimum",
           "exclusiveMaximum": "exclusive_maximum"}  # fmt: skip
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum",
                      "const", "pattern", *_COUNTS, *_BOUNDS})  # fmt: skip


class SchemaError(ValueError):
    """A schema this validator cannot use; the message starts with where in the schema."""


@dataclass(frozen=True, slots=True)
class Schema:
    """A compiled schema; `accept` is set for the boolean schemas true and false."""

    accept: bool | None = None
    types: tuple[str, ...] = ()
    properties: tuple[tuple[str, Schema], ...] = ()
    required: tuple[str, ...] = ()
    additional: Schema | None = None
    items: Schema | None = None
    enum: frozenset[str] | None = None  # canonical JSON texts
    const: str | None = None  # canonical JSON text
    pattern: re.Pattern[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None


def canonical(value: Any) -> str:
    """JSON text that two values share exactly when JSON Schema calls them equal."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def type_of(value: Any) -> str:
    """The JSON type name of a parsed JSON value ('integer' for whole numbers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# ---------------------------------------------------------------------------- compiling


def compile_schema(raw: Any, at: str = "") -> Schema:
    """A Schema from its parsed JSON, or a SchemaError naming the place (a JSON pointer)."""
    where = at or "/"
    if isinstance(raw, bool):
        return Schema(accept=raw)
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: a schema is an object or a boolean, not {type_of(raw)}")
    unknown = sorted(set(raw) - KEYWORDS - ANNOTATIONS)
    if unknown:
        raise SchemaError(
            f"{where}: unsupported keywords {unknown} (supported: {sorted(KEYWORDS)})"
        )
    fields: dict[str, Any] = {"types": _types(raw.get("type"), where)} if "type" in raw else {}
    if "properties" in raw:
        fields["properties"] = _properties(raw["properties"], at)
    if "required" in raw:
        fields["required"] = _names(raw["required"], f"{at}/required")
    if "additionalProperties" in raw:
        fields["additional"] = compile_schema(raw["additionalProperties"],
                                              f"{at}/additionalProperties")  # fmt: skip
    if "items" in raw:
        fields["items"] = compile_schema(raw["items"], f"{at}/items")
    if "enum" in raw:
        fields["enum"] = _enum(raw["enum"], f"{at}/enum")
    if "const" in raw:
        fields["const"] = canonical(raw["const"])
    if "pattern" in raw:
        fields["pattern"] = _pattern(raw["pattern"], f"{at}/pattern")
    for key, name in _COUNTS.items():
        if key in raw:
            fields[name] = _count(raw[key], f"{at}/{key}")
    for key, name in _BOUNDS.items():
        if key in raw:
            if not _is_number(raw[key]) or not math.isfinite(raw[key]):
                raise SchemaError(f"{at}/{key}: must be a finite number")
            fields[name] = float(raw[key])
    return Schema(**fields)


def _types(raw: Any, where: str) -> tuple[str, ...]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise SchemaError(f"{where}/type: a type name or a non-empty list of distinct ones")
    bad = [n for n in names if n not in TYPES]
    if bad:
        raise SchemaError(f"{where}/type: unknown types {bad} (known: {list(TYPES)})")
    return tuple(names)


def _properties(raw: Any, at: str) -> tuple[tuple[str, Schema], ...]:
    if not isinstance(raw, dict):
        raise SchemaError(f"{at}/properties: must be an object of schemas")
    return tuple((name, compile_schema(sub, f"{at}/properties/{_escape(name)}"))
                 for name, sub in raw.items())  # fmt: skip


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise SchemaError(f"{where}: must be a list of property names")
    if len(set(raw)) != len(raw):
        raise SchemaError(f"{where}: names must be distinct")
    return tuple(raw)


def _enum(raw: Any, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{where}: must be a non-empty list")
    return frozenset(map(canonical, raw))


def _pattern(raw: Any, where: str) -> re.Pattern[str]:
    if not isinstance(raw, str):
        raise SchemaError(f"{where}: must be a string")
    try:
        return re.compile(raw)
    except (re.error, OverflowError, RecursionError) as exc:
        raise SchemaError(f"{where}: bad regex {raw!r}: {exc}") from None


def _count(raw: Any, where: str) -> int:
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise SchemaError(f"{where}: must be a non-negative integer")
    return raw


def _escape(name: str) -> str:
    """A property name as a JSON-pointer token."""
    return name.replace("~", "~0").replace("/", "~1")


# ---------------------------------------------------------------------------- validating


def errors(schema: Schema, value: Any, at: str = "") -> Iterator[str]:
    """What is wrong with a parsed JSON value, one message per problem ("/path: reason")."""
    where = at or "/"
    if schema.accept is not None:
        if not schema.accept:
            yield f"{where}: no value is allowed here"
        return
    kind = type_of(value)
    if schema.types and not (kind in schema.types or (kind == "integer" and "number" in
                                                     schema.types)):  # fmt: skip
        yield f"{where}: expected {' or '.join(schema.types)}, got {kind}"
        return
    if schema.enum is not None and canonical(value) not in schema.enum:
        yield f"{where}: not one of the allowed values"
    if schema.const is not None and canonical(value) != schema.const:
        yield f"{where}: not the required value {schema.const}"
    if kind in ("integer", "number"):
        yield from _number_errors(schema, value, where)
    elif kind == "string":
        yield from _string_errors(schema, value, where)
    elif kind == "array":
        yield from _array_errors(schema, value, at)
    elif kind == "object":
        yield from _object_errors(schema, value, at)


def _number_errors(schema: Schema, value: float, where: str) -> Iterator[str]:
    if schema.minimum is not None and value < schema.minimum:
        yield f"{where}: {value} is below the minimum {schema.minimum:g}"
    if schema.maximum is not None and value > schema.maximum:
        yield f"{where}: {value} is above the maximum {schema.maximum:g}"
    if schema.exclusive_minimum is not None and value <= schema.exclusive_minimum:
        yield f"{where}: {value} is not above {schema.exclusive_minimum:g}"
    if schema.exclusive_maximum is not None and value >= schema.exclusive_maximum:
        yield f"{where}: {value} is not below {schema.exclusive_maximum:g}"


def _string_errors(schema: Schema, value: str, where: str) -> Iterator[str]:
    if schema.min_length is not None and len(value) < schema.min_length:
        yield f"{where}: shorter than {schema.min_length} characters"
    if schema.max_length is not None and len(value) > schema.max_length:
        yield f"{where}: longer than {schema.max_length} characters"
    if schema.pattern is not None and schema.pattern.search(value) is None:
        yield f"{where}: does not match {schema.pattern.pattern!r}"


def _array_errors(schema: Schema, value: list[Any], at: str) -> Iterator[str]:
    where = at or "/"
    if schema.min_items is not None and len(value) < schema.min_items:
        yield f"{where}: fewer than {schema.min_items} items"
    if schema.max_items is not None and len(value) > schema.max_items:
        yield f"{where}: more than {schema.max_items} items"
    if schema.items is not None:
        for index, item in enumerate(value):
            yield from errors(schema.items, item, f"{at}/{index}")


def _object_errors(schema: Schema, value: dict[str, Any], at: str) -> Iterator[str]:
    where = at or "/"
    for name in schema.required:
        if name not in value:
            yield f"{where}: missing required property {name!r}"
    known = dict(schema.properties)
    for name, item in value.items():
        sub = known.get(name, schema.additional)
        if sub is not None and sub.accept is False and name not in known:
            yield f"{where}: unexpected property {name!r}"
        elif sub is not None:
            yield from errors(sub, item, f"{at}/{_escape(name)}")

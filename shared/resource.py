"""Resource descriptions: the fields of each resource the API serves, written once, as data.

A ``Resource`` is an ordered list of ``Field``s: the JSON name, its JSON type, whether it may be null,
where the value is read from and how it is written (a timestamp in RFC 3339, a secret masked, a JSON
column that reads null as empty). From that one description come the Python rendering
(``Resource.render``), the jobs page's SQL select list (``api.job_page``) and the OpenAPI schema
(``api.schemas.resources``), so none of them can drift from the others.

Rendering is plain dict building driven by precomputed getters (it runs on every read and trigger):
one C-level read of every sourced value, then only the fields that need writing are touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property
from operator import attrgetter, itemgetter
from typing import Any

from shared.clock import format_ts
from shared.webhooks.signing import mask_secret


class Writing(Enum):
    """How a stored value becomes the field's JSON value."""

    AS_IS = "as is"
    TIMESTAMP = "RFC 3339 in UTC with six fractional digits and Z (format_ts)"
    MASKED = "whsec_… and the secret's last four characters; null when unset"
    OR_EMPTY_OBJECT = "the stored JSON, {} when null or empty"
    OR_EMPTY_ARRAY = "the stored JSON, [] when null or empty"
    JSON_TEXT = "JSON stored as text, decoded; {} when empty"


def _or_empty_object(value: Any) -> Any:
    return value or {}


def _or_empty_array(value: Any) -> Any:
    return value or []


def _json_text(value: Any) -> Any:
    return json.loads(value) if value else {}


WRITERS: dict[Writing, Callable[[Any], Any]] = {
    Writing.TIMESTAMP: format_ts,
    Writing.MASKED: mask_secret,
    Writing.OR_EMPTY_OBJECT: _or_empty_object,
    Writing.OR_EMPTY_ARRAY: _or_empty_array,
    Writing.JSON_TEXT: _json_text,
}

# JSON types of a field (OpenAPI's, plus "any" for a value of any type).
STRING, INTEGER, NUMBER, BOOLEAN = "string", "integer", "number", "boolean"
OBJECT, ARRAY, ANY = "object", "array", "any"
_SOURCE_IS_NAME = "="  # ``Field.source`` default: the value is read under the field's own name


@dataclass(frozen=True)
class Field:
    """One field of a resource.

    ``type``: a JSON type, or a resource for an object of that shape. ``source``: the key or attribute the
    value is read from (the field's name unless given; ``None``: a field the API always writes as null).
    ``items``: an array's item type (a JSON type or a resource); ``values``: the JSON type of a map's
    values, when they have one. ``optional``: the field is left out when its value is null or false
    (``dry_run``, the error's ``errors``).
    """

    name: str
    type: str | Resource
    nullable: bool = False
    source: str | None = _SOURCE_IS_NAME
    writing: Writing = Writing.AS_IS
    items: str | Resource | None = None
    values: str | None = None
    enum: tuple[str, ...] = ()
    optional: bool = False
    description: str = ""

    @property
    def read_from(self) -> str | None:
        return self.name if self.source == _SOURCE_IS_NAME else self.source


def timestamp(name: str, *, nullable: bool = False, source: str | None = _SOURCE_IS_NAME,
              description: str = "") -> Field:
    """A datetime written as ``format_ts`` writes it."""
    return Field(name, STRING, nullable, source, Writing.TIMESTAMP, description=description)


@dataclass(eq=False)
class Resource:
    """A named, ordered set of fields, read from objects' attributes (``by_attribute``) or mappings' keys."""

    name: str
    fields: tuple[Field, ...]
    by_attribute: bool = False

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a field is described twice")

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def extended(self, name: str, extra: Iterable[Field], *, before: str | None = None, prefix: str = "",
                 nullable: Iterable[str] = ()) -> Resource:
        """A resource with this one's fields and ``extra`` (at the end, or in front of the field ``before``).
        ``prefix`` is put before this resource's sources (``"run."``: read them from the source's ``run``);
        the fields named in ``nullable`` may be null in the new resource."""
        may_be_null = frozenset(nullable)
        own = tuple(replace(f, source=prefix + f.read_from if prefix and f.read_from is not None else f.source,
                            nullable=f.nullable or f.name in may_be_null) for f in self.fields)
        added = tuple(extra)
        at = len(own) if before is None else self.names.index(before)
        return Resource(name, own[:at] + added + own[at:], self.by_attribute)

    @cached_property
    def _plan(self) -> tuple[dict[str, Any], tuple[str, ...], Callable[[Any], tuple[Any, ...]],
                             tuple[tuple[str, Callable[[Any], Any]], ...], tuple[str, ...]]:
        """(an ordered template of every field, the sourced names, a reader of their values, the writers,
        the optional names)."""
        sourced = [f for f in self.fields if f.read_from is not None]
        sources = [f.read_from or "" for f in sourced]
        getter = (attrgetter if self.by_attribute else itemgetter)(*sources)
        read = getter if len(sources) > 1 else (lambda source: (getter(source),))
        writers = tuple((f.name, WRITERS[f.writing]) for f in self.fields if f.writing is not Writing.AS_IS)
        optional = tuple(f.name for f in self.fields if f.optional)
        return dict.fromkeys(self.names), tuple(f.name for f in sourced), read, writers, optional

    def render(self, source: Any) -> dict[str, Any]:
        """The resource as a JSON-ready dict, fields in order, read from ``source``."""
        template, names, read, writers, optional = self._plan
        body = template.copy()
        body.update(zip(names, read(source), strict=True))
        for name, write in writers:
            body[name] = write(body[name])
        for name in optional:
            if body[name] is None or body[name] is False:
                del body[name]
        return body


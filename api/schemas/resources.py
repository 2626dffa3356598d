"""Response schemas made from the resource descriptions (``shared.resource``), for the OpenAPI document.

Views render with ``Resource.render`` and return the bytes themselves; these schemas only document what
is served, so they are made from the same descriptions. Every field that is not optional is required,
null is allowed only where the description says so, and no undocumented field may appear
(``additionalProperties: false``): a test validates served bodies against them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import marshmallow as ma

from shared.resource import ANY, ARRAY, BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, Field, Resource, Writing

_PLAIN: dict[str, type[ma.fields.Field]] = {
    STRING: ma.fields.String, INTEGER: ma.fields.Integer, NUMBER: ma.fields.Float, BOOLEAN: ma.fields.Boolean,
    ANY: ma.fields.Raw,
}


def _member(kind: str | Resource | None) -> ma.fields.Field:
    """The field of an array's item or an object's value."""
    if isinstance(kind, Resource):
        return ma.fields.Nested(schema_of(kind))
    return _PLAIN.get(kind or ANY, ma.fields.Raw)()


def _field(described: Field) -> ma.fields.Field:
    metadata: dict[str, Any] = {}
    if described.description:
        metadata["description"] = described.description
    if described.writing is Writing.TIMESTAMP:
        metadata["format"] = "date-time"
    if described.enum:
        metadata["enum"] = list(described.enum)
    options: dict[str, Any] = {"required": not described.optional, "allow_none": described.nullable,
                               "metadata": metadata}
    if isinstance(described.type, Resource):
        return ma.fields.Nested(schema_of(described.type), **options)
    if described.type == ARRAY:
        return ma.fields.List(_member(described.items), **options)
    if described.type == OBJECT:
        values = _member(described.values) if described.values is not None else None
        return ma.fields.Dict(keys=ma.fields.String(), values=values, **options)
    return _PLAIN[described.type](**options)


@cache
def schema_of(resource: Resource) -> type[ma.Schema]:
    """The marshmallow schema of ``resource``, named after it (one OpenAPI component per resource)."""
    return ma.Schema.from_dict({f.name: _field(f) for f in resource.fields}, name=resource.name)

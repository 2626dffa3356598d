"""Resource descriptions (``shared.resource``): rendering from a description, and the schemas made from it."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from api.resources import ERROR, NOT_READY, TRIGGER_RESULT
from api.schemas.resources import schema_of
from shared.jobs.config import W_FIELDS
from shared.jobs.resource import CONFIG_FIELDS, JOB, VERSION
from shared.resource import ANY, INTEGER, STRING, Field, Resource, Writing, timestamp
from shared.runs.resource import RUN

AT = datetime(2026, 5, 4, 3, 2, 1, 7, tzinfo=UTC)


def test_fields_render_in_order_from_their_sources_with_their_writing() -> None:
    thing = Resource("Thing", (
        Field("id", STRING), Field("meta", ANY, source="stored_meta", writing=Writing.OR_EMPTY_OBJECT),
        Field("always_null", STRING, nullable=True, source=None), timestamp("at"),
        Field("secret", STRING, nullable=True, writing=Writing.MASKED), Field("body", ANY, writing=Writing.JSON_TEXT),
        Field("flag", "boolean", optional=True),
    ))
    row = {"id": "t1", "stored_meta": None, "at": AT, "secret": "whsec_abcdefgh", "body": '{"a": [1]}', "flag": False}
    rendered = thing.render(row)
    assert rendered == {"id": "t1", "meta": {}, "always_null": None, "at": "2026-05-04T03:02:01.000007Z",
                        "secret": "whsec_…efgh", "body": {"a": [1]}}
    assert list(rendered) == ["id", "meta", "always_null", "at", "secret", "body"]  # the optional one left out
    assert thing.render({**row, "flag": True})["flag"] is True


def test_attribute_sources_and_extensions() -> None:
    base = Resource("Base", (Field("id", STRING), Field("n", INTEGER)), by_attribute=True)
    wider = base.extended("Wider", (Field("hit", "boolean"),), prefix="inner.")
    source = SimpleNamespace(inner=SimpleNamespace(id="x", n=2), hit=True)
    assert wider.render(source) == {"id": "x", "n": 2, "hit": True}
    one = Resource("One", (Field("only", INTEGER),))
    assert one.render({"only": 1}) == {"only": 1}
    with pytest.raises(ValueError, match="described twice"):
        Resource("Twice", (Field("a", STRING), Field("a", STRING)))


def test_the_job_configuration_is_the_writable_fields() -> None:
    assert tuple(f.name for f in CONFIG_FIELDS) == W_FIELDS
    assert JOB.names[2:-6] == VERSION.names[3:-3] == W_FIELDS


def test_error_and_trigger_result_extend_their_bases() -> None:
    assert NOT_READY.names == ("code", "status", "message", "errors", "checks", "request_id")
    assert TRIGGER_RESULT.names[:len(RUN.names)] == RUN.names
    assert ERROR.names[-1] == "request_id"


def test_schemas_require_every_field_but_the_optional_and_allow_null_as_described() -> None:
    fields = schema_of(RUN)().fields
    assert set(fields) == set(RUN.names)
    assert all(field.required for field in fields.values())
    assert fields["error"].allow_none and not fields["status"].allow_none
    assert fields["created_at"].metadata["format"] == "date-time"
    error = schema_of(ERROR)().fields
    assert not error["errors"].required and error["code"].required
    assert schema_of(JOB) is schema_of(JOB)  # one schema (one OpenAPI component) per resource

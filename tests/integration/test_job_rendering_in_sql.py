"""The jobs page rendered by its statement (``api.job_page``: the select list made from the Job
description, timestamps formatted and JSON columns as text in SQL) must be exactly ``JOB.render`` of the
stored records, byte for byte once encoded, whatever the stored values — prepared (the usual page sizes)
and sent as text (other sizes). Rows are written directly, so values the API would never store are
covered too: a fixed set of awkward ones, and rows Hypothesis generates column by column."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from api.job_page import find_key_and_versioned_page
from shared import json_codec
from shared.apikeys import key_digest
from shared.db.engine import make_session_factory, transaction
from shared.db.models import UTCDateTime
from shared.ids import new_version_id, uuid7
from shared.jobs.config import config_for_create
from shared.jobs.resource import JOB
from shared.jobs.store import JOBS, list_job_records, new_job_record
from tests.conftest import make_key

PROJECT = "proj-a"
BASE = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BIG = 123456789012345678901234567890
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "maximum": BIG, "multipleOf": 0.1}},
          "b": 1.10, "a": 1e-7, "": [None, True, 2**63, -(2**63) - 1], "é😀": "x\u2028y"}
# Overrides of a plain job's columns; sa.null() is SQL NULL, None in a JSON column is JSON null.
VARIANTS: list[dict[str, Any]] = [
    {},
    {"tags": {"é": "ü 😀", 'quo"te': "back\\slash\n\t\x01\x7f", "k, v": "a: b"}, "description": "naïve"},
    {"tags": None, "rate_limit_keys": None, "default_run_metadata": None, "retry_delays_secs": None,
     "payload_schema": sa.null()},
    {"tags": False, "rate_limit_keys": 0, "default_run_metadata": "", "retry_delays_secs": {}},  # falsy JSON
    {"tags": [], "rate_limit_keys": {}, "default_run_metadata": [], "retry_delays_secs": [0, 5, 30]},
    {"payload_schema": SCHEMA, "rate_limit_keys": [{"name": "tenant", "max": 3, "window_secs": 10}]},
    {"payload_schema": {}, "default_run_metadata": {"k": "v", "n": "1"}},
    {"payload_schema": 0.5, "tags": {"big": str(BIG)}},
    {"webhook_secret": ""}, {"webhook_secret": "a"}, {"webhook_secret": "whsec_abcd1234"},
    {"webhook_secret": "ünïcødé密钥😀", "webhook_url": "http://127.0.0.1:9/hook"},
    {"group_id": "g", "cron": "*/5 * * * *", "execution_window_cron": "* 9-17 * * 1-5", "timezone": "Asia/Tokyo",
     "max_concurrency": 2**31 - 1, "rate_limit_max": 0, "rate_limit_window_secs": 60, "max_concurrency_per_key": 1,
     "dedup_window_secs": 120, "enabled": False, "run_ttl_secs": 600, "retry_strategy": "custom",
     "environment_id": "prod", "version_policy": "latest", "backwards_compatible": True, "version": 7,
     "fallback_endpoint_url": "http://127.0.0.1:9/f?a=1&b=</script>"},
    {"name": "Ünïcode 😀 \"quoted\" <b>", "description": "line\r\nbreak\u2029\u0085 tab\t"},
]


def _times(index: int) -> dict[str, datetime]:
    created = BASE - timedelta(minutes=index)
    if index % 3 == 1:
        created = created.replace(microsecond=0)  # format_ts still writes six digits
    if index % 3 == 2:  # an instant given with another offset is stored and rendered in UTC
        created = created.astimezone(timezone(timedelta(hours=5, minutes=30)))
    return {"created_at": created, "updated_at": created + timedelta(days=400, microseconds=7),
            "schedule_changed_at": created}


def _store(session_factory: Any, project: str = PROJECT) -> None:
    with transaction(session_factory) as s:
        for index, overrides in enumerate(VARIANTS):
            config = config_for_create({"name": f"Job {index}", "slug": f"job-{index}",
                                        "endpoint_url": "http://127.0.0.1:9/e"})
            record = new_job_record(job_id=uuid7(), project_id=project, config=config, version_id=new_version_id(),
                                    actor="apikey:test", now=BASE)
            record.update(_times(index))
            record.update(overrides)
            s.execute(sa.insert(JOBS).values(**record))  # one by one: sa.null() is a per-row expression


@pytest.fixture(name="engine")
def engine_fixture(db_engine: Engine) -> Engine:
    return db_engine.execution_options(isolation_level="AUTOCOMMIT")


def _rendered_page(session: Session, digest: str, limit: int, after: Any = None
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    key, versioned = find_key_and_versioned_page(session, digest, limit=limit, after=after)
    return key, [job for job, _ in versioned]


def _pages(session: Session, digest: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each page both ways: (rendered by the statement, rendered by ``JOB.render`` from records)."""
    after = None
    while True:
        _, rendered = _rendered_page(session, digest, limit, after)
        records = list_job_records(session, PROJECT, limit=limit, after=after)
        yield rendered, [JOB.render(record) for record in records]
        if len(records) < limit:
            return
        after = (records[-1]["created_at"], records[-1]["id"])


@pytest.mark.parametrize("limit", [200, 4])
def test_the_rendered_page_is_the_descriptions_byte_for_byte(engine: Engine, session_factory: Any, limit: int) -> None:
    _store(session_factory)
    digest = key_digest(make_key(session_factory))
    assert digest is not None
    seen = 0
    with make_session_factory(engine)() as session:
        for rendered, expected in _pages(session, digest, limit):
            assert rendered == expected
            assert [list(job) for job in rendered] == [list(JOB.names)] * len(rendered)  # field order
            assert json_codec.dumps(rendered) == json_codec.dumps(expected)
            seen += len(rendered)
    assert seen == len(VARIANTS)


def test_the_key_comes_with_the_page(engine: Engine, session_factory: Any) -> None:
    _store(session_factory, project="proj-b")  # another project's jobs are never on the page
    plaintext = make_key(session_factory, scopes="jobs:read,jobs:write")
    with make_session_factory(engine)() as session:
        key, jobs = _rendered_page(session, key_digest(plaintext) or "", 51)
        assert key is not None and jobs == []
        assert key["key_project_id"] == PROJECT and sorted(key["key_scopes"]) == ["jobs:read", "jobs:write"]
        assert key["key_revoked_at"] is None and key["key_last_used_at"] is None
        assert _rendered_page(session, "0" * 64, 51) == (None, [])


# ------------------------------------------------------------------ generated rows, column by column

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=6)
_TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                 timezone(-timedelta(hours=11))]))


def _column_values(column: sa.Column[Any]) -> st.SearchStrategy[Any]:
    """Any value the column can hold (SQL NULL where it is nullable)."""
    if isinstance(column.type, UTCDateTime):
        values: st.SearchStrategy[Any] = _TIMES
    elif isinstance(column.type, sa.JSON):
        values = _JSON | st.just(sa.null()) if column.nullable else _JSON
    elif isinstance(column.type, sa.Boolean):
        values = st.booleans()
    elif isinstance(column.type, sa.Integer):
        values = st.integers(-(2**31), 2**31 - 1)
    else:
        values = _TEXT.map(lambda text: text[: getattr(column.type, "length", None) or 12])
    return values | st.none() if column.nullable and not isinstance(column.type, sa.JSON) else values


_FIXED = {"id", "project_id", "slug"}
_ROWS = st.lists(st.fixed_dictionaries({c.name: _column_values(c) for c in JOBS.c if c.name not in _FIXED}),
                 min_size=1, max_size=4)


@pytest.fixture(name="key_digest_of_project")
def key_digest_fixture(session_factory: Any) -> str:
    return key_digest(make_key(session_factory)) or ""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS)
def test_generated_rows_render_the_same_both_ways(engine: Engine, session_factory: Any, key_digest_of_project: str,
                                                  rows: list[dict[str, Any]]) -> None:
    with transaction(session_factory) as s:
        s.execute(sa.delete(JOBS).where(JOBS.c.project_id == PROJECT))
        for index, row in enumerate(rows):
            s.execute(sa.insert(JOBS).values(id=uuid7(), project_id=PROJECT, slug=f"s-{index}", **row))
    with make_session_factory(engine)() as session:
        for rendered, expected in _pages(session, key_digest_of_project, 3):
            assert rendered == expected
            assert json_codec.dumps(rendered) == json_codec.dumps(expected)

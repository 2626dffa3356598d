"""``api.job_page`` renders the unfiltered jobs page in its statement (fields in order, timestamps
formatted, JSON columns as text): its Job resources must be exactly ``render_job``'s, and byte-for-byte
the same once encoded, whatever the stored values — on the driver path (prepared statements) and on the
SQLAlchemy fallback. Rows are written directly, so values the API would never store are covered too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from api.job_page import find_key_and_rendered_page
from api.job_render import JOB_FIELDS, render_job
from shared import json_codec
from shared.apikeys import key_digest
from shared.db.engine import make_engine, make_session_factory, transaction
from shared.db.prepared import enable_prepared_statements
from shared.ids import new_version_id, uuid7
from shared.jobs.config import config_for_create
from shared.jobs.store import JOBS, list_job_records, new_job_record
from tests.conftest import make_key, pg_url

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


@pytest.fixture(name="engine", params=["fallback", "driver"])
def engine_fixture(request: pytest.FixtureRequest, db_engine: Engine) -> Iterator[Engine]:
    """The test engine (statements through SQLAlchemy) or one with prepared statements, as the API runs."""
    if request.param == "fallback":
        yield db_engine.execution_options(isolation_level="AUTOCOMMIT")
        return
    engine = make_engine(pg_url(), pool_size=2)
    enable_prepared_statements(engine)
    yield engine.execution_options(isolation_level="AUTOCOMMIT")
    engine.dispose()


def _pages(session: Session, digest: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each page both ways: (rendered by the statement, rendered by ``render_job`` from records)."""
    after = None
    while True:
        _, rendered = find_key_and_rendered_page(session, digest, limit=limit, after=after)
        records = list_job_records(session, PROJECT, limit=limit, after=after)
        yield rendered, [render_job(record) for record in records]
        if len(records) < limit:
            return
        after = (records[-1]["created_at"], records[-1]["id"])


@pytest.mark.parametrize("limit", [200, 4])
def test_the_rendered_page_is_render_jobs_byte_for_byte(engine: Engine, session_factory: Any, limit: int) -> None:
    _store(session_factory)
    digest = key_digest(make_key(session_factory))
    assert digest is not None
    seen = 0
    with make_session_factory(engine)() as session:
        for rendered, expected in _pages(session, digest, limit):
            assert rendered == expected
            assert [list(job) for job in rendered] == [list(JOB_FIELDS)] * len(rendered)  # field order
            assert json_codec.dumps(rendered) == json_codec.dumps(expected)
            seen += len(rendered)
    assert seen == len(VARIANTS)


def test_the_key_comes_with_the_page(engine: Engine, session_factory: Any) -> None:
    _store(session_factory, project="proj-b")  # another project's jobs are never on the page
    plaintext = make_key(session_factory, scopes="jobs:read,jobs:write")
    with make_session_factory(engine)() as session:
        key, jobs = find_key_and_rendered_page(session, key_digest(plaintext) or "", limit=51, after=None)
        assert key is not None and jobs == []
        assert key["key_project_id"] == PROJECT and sorted(key["key_scopes"]) == ["jobs:read", "jobs:write"]
        assert key["key_revoked_at"] is None and key["key_last_used_at"] is None
        assert find_key_and_rendered_page(session, "0" * 64, limit=51, after=None) == (None, [])

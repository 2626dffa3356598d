"""The admission rules in SQL and in Python agree (``shared.runs.admission``), on generated runs and jobs.

The worker's start statement starts a run only when every rule holds in SQL; when one does not, the worker
asks the same rules in Python which one refused. Each rule is written once and rendered in both forms;
here Hypothesis writes runs and jobs with ordinary and odd stored values to real PostgreSQL and compares,
rule by rule, what the SQL says with what Python says about the candidate the start statement returns.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.egress.addresses import USERINFO_PATTERN, strip_userinfo
from shared.runs.admission import FIELDS, RULES, UNLIMITED, first_refusal, settings_problem, startable_sql
from shared.runs.retries import STRATEGIES
from tests import factories
from worker.attempt import Picked

NOW = utcnow()
_CANDIDATE = "json_build_object(" + ", ".join(f"'{name}', {sql}" for name, sql in FIELDS.items()) + ")"

ints = st.sampled_from([None, -1, 0, 1, 2, 99, 100, 101, 300, 86_400, 86_401])
# JSON that PostgreSQL stores: its text cannot hold NUL (``\u0000``).
json_text = st.text(st.characters(exclude_characters="\x00"), max_size=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | json_text, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=2),
    max_leaves=4)
delays = st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=3), json_values)

runs_and_jobs = st.fixed_dictionaries({
    "attempt": st.integers(0, 2),
    "expires_in": st.sampled_from([None, -60, 0, 60]),
    "pinned_older": st.booleans(),
    "concurrency_key": st.sampled_from([None, "", "tenant"]),
    "version_policy": st.sampled_from(["pin", "latest", "minor", "other"]),
    "backwards_compatible": st.booleans(),
    "execution_window_cron": st.sampled_from([None, "", "* * * * *"]),
    "endpoint_url": st.sampled_from(["", "http://example.test/x"]),
    "fallback_endpoint_url": st.sampled_from([None, "", "http://example.test/f"]),
    "timeout_secs": ints.filter(lambda v: v is not None),
    "max_attempts": ints.filter(lambda v: v is not None),
    "retry_strategy": st.sampled_from([*STRATEGIES, "", "sometimes"]),
    "retry_delays_secs": delays,
    "max_concurrency": ints,
    "max_concurrency_per_key": ints,
    "rate_limit_max": ints,
    "rate_limit_window_secs": ints,
    "rate_limit_keys": st.one_of(st.none(), st.just([]), st.just([{"name": "c", "max": 1, "window_secs": 1}]),
                                 json_values),
    "window_open": st.sampled_from(["none", "this", "other"]),
    "settings_checked": st.sampled_from(["none", "this", "other"]),
    "project_max_executing": st.sampled_from([None, 1, 2]),
    "project_executing": st.integers(0, 2),  # other runs of the project executing
})


def _write(session: Session, case: dict[str, Any]) -> str:
    job_fields = {name: case[name] for name in FIELDS if name in factories.JOB_DEFAULTS}
    job = factories.make_job(session, **job_fields)
    expires = None if case["expires_in"] is None else NOW + timedelta(seconds=case["expires_in"])
    version_id = "ver_olderversion" if case["pinned_older"] else job.version_id
    run = factories.make_run(session, job, attempt=case["attempt"], expires_at=expires,
                             concurrency_key=case["concurrency_key"], job_version_id=version_id)
    for _ in range(case["project_executing"]):
        factories.make_run(session, job, status="executing", attempt=1)
    return run.id


def _param(choice: str, run_id: str) -> str | None:
    return {"none": None, "this": run_id, "other": "another-run"}[choice]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=runs_and_jobs)
def test_sql_and_python_agree_on_every_rule(session: Session, case: dict[str, Any]) -> None:
    savepoint = session.begin_nested()
    try:
        run_id = _write(session, case)
        params = {"now": NOW, "window_open_id": _param(case["window_open"], run_id),
                  "settings_checked_id": _param(case["settings_checked"], run_id),
                  "project_max_executing": case["project_max_executing"]}
        columns = [f"{rule.predicate.sql} AS {rule.name}" for rule in RULES]
        row = session.execute(sa.text(
            f"SELECT {', '.join(columns)}, {startable_sql()} AS startable, {UNLIMITED.sql} AS unlimited, "
            f"{_CANDIDATE} AS candidate FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id = :run_id"
        ), {**params, "run_id": run_id}).mappings().one()
        candidate = Picked.of(_row_with_candidate(row["candidate"])).candidate
        assert candidate is not None
        for rule in RULES:
            assert row[rule.name] is rule.predicate(candidate, params), (rule.name, candidate, params)
        assert row["unlimited"] is UNLIMITED(candidate, params)
        assert row["startable"] is (first_refusal(candidate, params) is None)
    finally:
        savepoint.rollback()


def _row_with_candidate(candidate: dict[str, Any]) -> tuple[Any, ...]:
    """A start-statement row around ``candidate``, to decode it exactly as the worker does."""
    return ("run", "queued", "job", "{}", None, False, None, None, "", None, 1, 1, "", None, 1, "ver", None, None,
            None, "project", None, None, False, None, {**candidate, "timezone": "UTC"})


@settings(max_examples=300, deadline=None)
@given(config=st.fixed_dictionaries({
    "endpoint_url": st.one_of(st.none(), st.sampled_from(["", "http://x"]), json_values),
    "fallback_endpoint_url": st.one_of(st.none(), st.just("http://f"), json_values),
    "timeout_secs": st.one_of(ints, json_values), "max_attempts": st.one_of(ints, json_values),
    "retry_strategy": st.one_of(st.sampled_from([*STRATEGIES, "", None]), json_values),
    "retry_delays_secs": delays,
}))
def test_snapshot_settings_are_checked_by_the_same_clauses(config: dict[str, Any]) -> None:
    """A version snapshot's settings pass exactly when each field has the shape the live columns have."""
    def shaped(value: Any, kind: type, low: int | None = None, high: int | None = None) -> bool:
        if kind is int:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high  # type: ignore[operator]
        return isinstance(value, kind)

    delays_ok = config["retry_delays_secs"] is None or (isinstance(config["retry_delays_secs"], list) and all(
        shaped(d, int, 0, 10**30) for d in config["retry_delays_secs"]))
    strategy = config["retry_strategy"]
    expected = (shaped(config["endpoint_url"], str) and config["endpoint_url"] != ""
                and (config["fallback_endpoint_url"] is None or shaped(config["fallback_endpoint_url"], str))
                and shaped(config["timeout_secs"], int, 1, 86_400) and shaped(config["max_attempts"], int, 1, 100)
                and (strategy is None or (isinstance(strategy, str) and strategy in (*STRATEGIES, "")))
                and delays_ok and (strategy != "custom" or bool(config["retry_delays_secs"])))
    assert (settings_problem(config) is None) is expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=st.from_regex(re.compile(r"([a-zA-Z+.-]{0,6}:)?(//)?[a-z:@/?#%.]{0,12}"), fullmatch=True) | st.text())
def test_userinfo_is_stripped_alike_in_sql_and_python(session: Session, url: str) -> None:
    url = url.replace("\x00", "")
    stripped = session.execute(sa.text(f"SELECT regexp_replace(:url, '{USERINFO_PATTERN}', '\\1//')"),
                               {"url": url}).scalar()
    assert stripped == strip_userinfo(url)

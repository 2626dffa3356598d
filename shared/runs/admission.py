"""Whether a picked run may start now, written once as data: each rule a predicate in SQL and in Python.

A *candidate* is a run with its live job, as named fields (``FIELDS``). Each rule is a predicate over a
candidate that holds when the rule lets the run start, built from the small set of operators below; every
operator renders itself as SQL over the worker's start statement (``r.`` run and ``j.`` job columns) and
checks itself in Python over a mapping of the same fields. So there is one text of each rule:

- the worker's start statement (``worker.start_statement``) starts a run only when every rule holds in
  SQL (``startable_sql``), and asks for the limit script when ``unlimited`` does not;
- when a picked run was not started, the worker evaluates the rules in Python (``first_refusal``), in
  order, to learn which one refused and what to do about it (``Rule.refusal``);
- the execution settings of a version snapshot are validated by the same clauses (``SETTINGS``) as the live
  job's (``shared.runs.execution_settings``).

``tests/integration/test_admission_rules.py`` feeds both forms the same generated runs and jobs (Hypothesis,
real PostgreSQL) and requires them to agree. Every operator is two-valued: SQL NULL never leaks out of a
predicate (``IS TRUE``, ``COALESCE``), and the Python form treats ``None`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.runs.retries import STRATEGIES

POLICIES = ("pin", "latest", "minor")

# Candidate fields and their SQL in the start statement (``r`` = runs, ``j`` = jobs).
FIELDS = {
    "id": "r.id", "attempt": "r.attempt", "expires_at": "r.expires_at", "job_version_id": "r.job_version_id",
    "concurrency_key": "r.concurrency_key", "version_policy": "j.version_policy",
    "backwards_compatible": "j.backwards_compatible", "version_id": "j.version_id",
    "execution_window_cron": "j.execution_window_cron", "endpoint_url": "j.endpoint_url",
    "fallback_endpoint_url": "j.fallback_endpoint_url", "timeout_secs": "j.timeout_secs",
    "max_attempts": "j.max_attempts", "retry_strategy": "j.retry_strategy",
    "retry_delays_secs": "j.retry_delays_secs", "max_concurrency": "j.max_concurrency",
    "max_concurrency_per_key": "j.max_concurrency_per_key", "rate_limit_max": "j.rate_limit_max",
    "rate_limit_window_secs": "j.rate_limit_window_secs", "rate_limit_keys": "j.rate_limit_keys",
    # The run's project's executing attempts, counted only when a per-project cap is set.
    "project_executing": "CASE WHEN CAST(:project_max_executing AS integer) IS NULL THEN 0 ELSE "
                         "(SELECT count(*) FROM runs e WHERE e.project_id = r.project_id "
                         "AND e.status = 'executing') END",
}
# Statement parameters the rules read: the clock, and the run whose window or snapshot settings the worker
# has just checked in Python (the start statement is then sent again for it).
# ``project_max_executing`` is the deployment's per-project cap on executing attempts (``None``: no cap).
PARAMS = {"now": "CAST(:now AS timestamptz)", "window_open_id": ":window_open_id",
          "settings_checked_id": ":settings_checked_id",
          "project_max_executing": "CAST(:project_max_executing AS integer)"}

Values = Mapping[str, Any]


@dataclass(frozen=True)
class Predicate:
    """One operator applied: ``sql`` renders it over ``FIELDS``, ``check`` evaluates it on a candidate."""

    sql: str
    check: Callable[[Values, Values], bool]  # (candidate, params) -> holds

    def __call__(self, candidate: Values, params: Values) -> bool:
        return self.check(candidate, params)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def field(name: str) -> Predicate:
    """A boolean field, true only when it is exactly true."""
    return Predicate(f"({FIELDS[name]} IS TRUE)", lambda c, p: c[name] is True)


def equals(name: str, value: str) -> Predicate:
    return Predicate(f"({FIELDS[name]} = {_literal(value)}) IS TRUE", lambda c, p: c[name] == value)


def differs(name: str, value: str) -> Predicate:
    return Predicate(f"({FIELDS[name]} IS DISTINCT FROM {_literal(value)})", lambda c, p: c[name] != value)


def same(name: str, other: str) -> Predicate:
    """Two fields equal (neither null)."""
    return Predicate(f"({FIELDS[name]} = {FIELDS[other]}) IS TRUE",
                     lambda c, p: c[name] is not None and c[name] == c[other])


def is_param(name: str, param: str) -> Predicate:
    """The field equals a statement parameter (neither null)."""
    return Predicate(f"({FIELDS[name]} = {PARAMS[param]}) IS TRUE",
                     lambda c, p: p.get(param) is not None and c[name] == p[param])


def later_than(name: str, param: str) -> Predicate:
    return Predicate(f"({FIELDS[name]} > {PARAMS[param]}) IS TRUE",
                     lambda c, p: c[name] is not None and c[name] > p[param])


def below(name: str, param: str) -> Predicate:
    """The field is below a statement parameter, or the parameter is null (no bound)."""
    return Predicate(f"({PARAMS[param]} IS NULL OR ({FIELDS[name]} < {PARAMS[param]}) IS TRUE)",
                     lambda c, p: p.get(param) is None or (c[name] is not None and c[name] < p[param]))


def is_null(name: str) -> Predicate:
    return Predicate(f"({FIELDS[name]} IS NULL)", lambda c, p: c[name] is None)


def positive(name: str) -> Predicate:
    return Predicate(f"({FIELDS[name]} > 0) IS TRUE", lambda c, p: _is_int(c[name]) and c[name] > 0)


def unset(name: str) -> Predicate:
    """Null or zero (a limit that is not set)."""
    return Predicate(f"(COALESCE({FIELDS[name]}, 0) = 0)", lambda c, p: c[name] is None or c[name] == 0)


def blank(name: str) -> Predicate:
    """Null or the empty text."""
    return Predicate(f"(COALESCE({FIELDS[name]}, '') = '')", lambda c, p: c[name] is None or c[name] == "")


def text(name: str) -> Predicate:
    """A non-empty text."""
    return Predicate(f"(COALESCE({FIELDS[name]}, '') <> '')", lambda c, p: isinstance(c[name], str) and c[name] != "")


def text_or_null(name: str) -> Predicate:
    # The column is text: in SQL it always is one or null.
    return Predicate("TRUE", lambda c, p: c[name] is None or isinstance(c[name], str))


def one_of(name: str, values: tuple[str, ...], *, blank_ok: bool = False) -> Predicate:
    allowed = (*values, "") if blank_ok else values
    sql_value = f"COALESCE({FIELDS[name]}, '')" if blank_ok else FIELDS[name]
    return Predicate(f"({sql_value} IN ({', '.join(_literal(v) for v in allowed)})) IS TRUE",
                     lambda c, p: (blank_ok and c[name] is None) or (isinstance(c[name], str) and c[name] in allowed))


def int_between(name: str, low: int, high: int) -> Predicate:
    return Predicate(f"({FIELDS[name]} BETWEEN {low} AND {high}) IS TRUE",
                     lambda c, p: _is_int(c[name]) and low <= c[name] <= high)


def counts(name: str) -> Predicate:
    """A JSON list of non-negative integers, or null (in SQL: the column's canonical JSON text has that shape)."""
    column = FIELDS[name]
    sql = f"({column} IS NULL OR {column}::text ~ '^(null|\\[([0-9]+(, [0-9]+)*)?\\])$')"
    return Predicate(sql, lambda c, p: c[name] is None or (
        isinstance(c[name], list) and all(_is_int(d) and d >= 0 for d in c[name])))


def non_empty_list(name: str) -> Predicate:
    column = FIELDS[name]
    return Predicate(f"(jsonb_typeof({column}) = 'array' AND jsonb_array_length({column}) > 0) IS TRUE",
                     lambda c, p: isinstance(c[name], list) and len(c[name]) > 0)


def empty_list(name: str) -> Predicate:
    """Null, JSON null or the empty list."""
    column = FIELDS[name]
    return Predicate(f"({column} IS NULL OR {column} IN ('[]'::jsonb, 'null'::jsonb))",
                     lambda c, p: c[name] is None or c[name] == [])


def all_of(*parts: Predicate) -> Predicate:
    return Predicate("(" + " AND ".join(part.sql for part in parts) + ")",
                     lambda c, p: all(part(c, p) for part in parts))


def any_of(*parts: Predicate) -> Predicate:
    return Predicate("(" + " OR ".join(part.sql for part in parts) + ")",
                     lambda c, p: any(part(c, p) for part in parts))


@dataclass(frozen=True)
class Clause:
    """One condition on execution settings, with the reason given when it fails."""

    predicate: Predicate
    reason: str


# The six execution settings, as the live job holds them or a version snapshot stores them.
SETTINGS = (
    Clause(text("endpoint_url"), "endpoint_url missing"),
    Clause(text_or_null("fallback_endpoint_url"), "fallback_endpoint_url malformed"),
    Clause(int_between("timeout_secs", 1, 86_400), "timeout_secs malformed"),
    Clause(int_between("max_attempts", 1, 100), "max_attempts malformed"),
    Clause(one_of("retry_strategy", STRATEGIES, blank_ok=True), "unknown retry_strategy"),
    Clause(counts("retry_delays_secs"), "retry_delays_secs malformed"),
    Clause(any_of(differs("retry_strategy", "custom"), non_empty_list("retry_delays_secs")),
           "custom retry_strategy without retry_delays_secs"),
)


def settings_problem(config: Values) -> str | None:
    """The first reason ``config``'s execution settings are unusable, ``None`` when they are usable."""
    for clause in SETTINGS:
        if not clause.predicate(config, {}):
            return clause.reason
    return None


@dataclass(frozen=True)
class Rule:
    """A rule a run must pass to start now; ``refusal`` names what the worker does when it does not."""

    name: str
    predicate: Predicate
    refusal: str  # expire | fail | snapshot | window | project_cap


_CHECKED_SETTINGS = is_param("id", "settings_checked_id")
RULES = (
    Rule("unexpired", any_of(positive("attempt"), is_null("expires_at"), later_than("expires_at", "now")), "expire"),
    Rule("known_policy", one_of("version_policy", POLICIES), "fail"),
    Rule("live_settings", any_of(equals("version_policy", "latest"),
                                 all_of(equals("version_policy", "minor"), field("backwards_compatible")),
                                 same("job_version_id", "version_id"), _CHECKED_SETTINGS), "snapshot"),
    Rule("usable_settings", any_of(all_of(*(c.predicate for c in SETTINGS)), _CHECKED_SETTINGS), "fail"),
    Rule("no_window", any_of(blank("execution_window_cron"), is_param("id", "window_open_id")), "window"),
    Rule("project_share", below("project_executing", "project_max_executing"), "project_cap"),
)
# Not a refusal of its own: a run of a job with a limit that applies starts only if the limit script admits it.
UNLIMITED = all_of(unset("max_concurrency"), any_of(unset("max_concurrency_per_key"), blank("concurrency_key")),
                   any_of(unset("rate_limit_max"), unset("rate_limit_window_secs")), empty_list("rate_limit_keys"))


def startable_sql(*, project_cap: bool = True) -> str:
    """SQL: every rule lets the run start (limits aside). Without ``project_cap`` the deployment sets no
    per-project cap, under which that rule holds for every run: it is left out, and with it its subquery."""
    return all_of(*(rule.predicate for rule in RULES if project_cap or rule.refusal != "project_cap")).sql


def first_refusal(candidate: Values, params: Values) -> Rule | None:
    """The first rule that refuses ``candidate``, ``None`` when every rule lets it start (limits aside)."""
    for rule in RULES:
        if not rule.predicate(candidate, params):
            return rule
    return None

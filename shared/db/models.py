"""SQLAlchemy 2.0 typed models of the PostgreSQL schema, which only the Alembic migrations create.

JSON columns are JSONB; timestamps are ``timestamptz``, written as UTC and always read back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: a naive value is taken as UTC rather than as the session's time zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSONB()
ID = sa.String(36)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    name: Mapped[str | None] = mapped_column(sa.String(255))
    prefix: Mapped[str] = mapped_column(sa.String(8))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "slug", name="uq_jobs_project_slug"),
        sa.Index("ix_jobs_project_created", "project_id", "created_at", "id"),
        sa.Index("ix_jobs_scheduled", "cron", postgresql_where=sa.text("cron IS NOT NULL")),
        sa.Index("ix_jobs_limited", "project_id", "created_at",
                 postgresql_where=sa.text("max_concurrency IS NOT NULL OR rate_limit_max IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(128))
    group_id: Mapped[str | None] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(255))
    slug: Mapped[str] = mapped_column(sa.String(128))
    description: Mapped[str | None] = mapped_column(sa.Text)
    cron: Mapped[str | None] = mapped_column(sa.String(128))
    payload_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    tags: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    endpoint_url: Mapped[str] = mapped_column(sa.String(2048))
    fallback_endpoint_url: Mapped[str | None] = mapped_column(sa.String(2048))
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    timeout_secs: Mapped[int] = mapped_column(sa.Integer, default=300)
    max_concurrency: Mapped[int | None] = mapped_column(sa.Integer)
    max_concurrency_per_key: Mapped[int | None] = mapped_column(sa.Integer)
    execution_window_cron: Mapped[str | None] = mapped_column(sa.String(128))
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    rate_limit_max: Mapped[int | None] = mapped_column(sa.Integer)
    rate_limit_window_secs: Mapped[int | None] = mapped_column(sa.Integer)
    rate_limit_keys: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    default_run_metadata: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    dedup_window_secs: Mapped[int | None] = mapped_column(sa.Integer)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    webhook_url: Mapped[str | None] = mapped_column(sa.String(2048))
    # Sealed (shared.webhooks.sealing): the mask, then the encrypted secret; plain only in rows written before.
    webhook_secret: Mapped[str | None] = mapped_column(sa.Text)
    webhook_secret_previous: Mapped[str | None] = mapped_column(sa.Text)  # still signs during a rotation
    run_ttl_secs: Mapped[int | None] = mapped_column(sa.Integer)
    retry_strategy: Mapped[str] = mapped_column(sa.String(16), default="exponential")
    retry_delays_secs: Mapped[list[int]] = mapped_column(JSONType, default=list)
    environment_id: Mapped[str | None] = mapped_column(sa.String(128))
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    version_id: Mapped[str] = mapped_column(sa.String(16))
    version_policy: Mapped[str] = mapped_column(sa.String(8), default="pin")
    backwards_compatible: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_by: Mapped[str] = mapped_column(sa.String(64))
    updated_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When cron, timezone or enabled last changed: ticks before it never count as missed (§6.4).
    schedule_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobVersion(Base):
    __tablename__ = "job_versions"
    __table_args__ = (sa.UniqueConstraint("job_id", "version", name="uq_job_versions_job_version"),)

    id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)  # the ver_… id
    job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(sa.Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)  # every W field, secret included
    created_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobDependency(Base):
    __tablename__ = "job_dependencies"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "depends_on_job_id", name="uq_job_dependencies_pair"),
        sa.Index("ix_job_dependencies_job_created", "job_id", "created_at", "id"),
        sa.Index("ix_job_dependencies_upstream", "depends_on_job_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(128))
    job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    depends_on_job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    condition: Mapped[str] = mapped_column(sa.String(16), default="completed")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(128))
    job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    total: Mapped[int] = mapped_column(sa.Integer)
    created: Mapped[int] = mapped_column(sa.Integer)
    created_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_project_created", "project_id", "created_at", "id"),
        sa.Index("ix_runs_job_created", "job_id", "created_at", "id"),
        # Partial where most runs hold NULL (migration 0002): a plain run skips them on INSERT.
        sa.Index("ix_runs_job_finished", "job_id", "finished_at",
                 postgresql_where=sa.text("finished_at IS NOT NULL")),
        sa.Index("ix_runs_job_idempotency", "job_id", "idempotency_key",
                 postgresql_where=sa.text("idempotency_key IS NOT NULL")),
        sa.Index("ix_runs_job_payload_hash", "job_id", "payload_hash", "created_at"),
        sa.Index("ix_runs_batch", "batch_id",
                 postgresql_where=sa.text("batch_id IS NOT NULL")),
        sa.Index("ix_runs_status_created", "project_id", "status", "created_at"),
        sa.Index("ix_runs_continuation_of", "continuation_of",
                 postgresql_where=sa.text("continuation_of IS NOT NULL")),
        # The ready set by priority, then project (the fair share between projects, migration 0007):
        # what a worker claims and the sweeper counts. (An expression index: autogenerate cannot compare it.)
        sa.Index("ix_runs_ready", sa.text("priority DESC"), sa.text('project_id COLLATE "C"'), "queued_at", "id",
                 postgresql_where=sa.text("status = 'queued'")),
        sa.Index("ix_runs_delayed_due", "due_at",
                 postgresql_where=sa.text("status = 'delayed'")),
        sa.Index("ix_runs_executing_heartbeat", "heartbeat_at",
                 postgresql_where=sa.text("status = 'executing'")),
        sa.Index("ix_runs_expiring", "expires_at",
                 postgresql_where=sa.text("attempt = 0 AND expires_at IS NOT NULL "
                                          "AND status IN ('delayed', 'queued')")),
        sa.Index("ix_runs_waiting_job", "job_id", "created_at",
                 postgresql_where=sa.text("status = 'waiting'")),
        # One run per (job, cron tick), forever (§6.3).
        sa.Index("uq_runs_cron_tick", "job_id", "idempotency_key", unique=True,
                 postgresql_where=sa.text("triggered_by = 'cron'")),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    payload: Mapped[str] = mapped_column(sa.Text)  # canonical JSON text (§4.5), sent as-is
    payload_hash: Mapped[str] = mapped_column(sa.String(64))
    result: Mapped[Any | None] = mapped_column(JSONType)
    run_metadata: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    error_class: Mapped[str | None] = mapped_column(sa.String(32))
    triggered_by: Mapped[str] = mapped_column(sa.String(16))
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(300))
    job_version: Mapped[int] = mapped_column(sa.Integer)
    job_version_id: Mapped[str] = mapped_column(sa.String(16))
    max_attempts_override: Mapped[int | None] = mapped_column(sa.Integer)
    timeout_secs_override: Mapped[int | None] = mapped_column(sa.Integer)
    retry_backoff: Mapped[str] = mapped_column(sa.String(16))
    retry_initial_delay_secs: Mapped[int] = mapped_column(sa.Integer, default=0)
    retry_max_delay_secs: Mapped[int] = mapped_column(sa.Integer, default=0)
    execution_trace: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    debug_mode: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    continuation_of: Mapped[str | None] = mapped_column(ID)
    lineage_depth: Mapped[int] = mapped_column(sa.Integer, default=0)
    tags: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(sa.String(64))
    batch_id: Mapped[str | None] = mapped_column(ID)
    concurrency_key: Mapped[str | None] = mapped_column(sa.String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # W3C trace context the run was created with (shared.runs.trace_context); NULL for runs from before.
    traceparent: Mapped[str | None] = mapped_column(sa.String(55))
    # Internal bookkeeping, not part of the Run resource:
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last became queued (§5.16, §5.11)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # delayed: max(scheduled_at, next_retry_at)
    ttl_secs: Mapped[int | None] = mapped_column(sa.Integer)  # TTL chosen at creation, for released runs
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a worker found the job disabled


class RunEvent(Base):
    """A run's history, read only by run in (created_at, id) order: that is the primary key (migration
    0003). No foreign key to ``runs``: events are written next to their run by Sluice's own statements
    and deleted with it by ``shared.jobs.lifecycle.delete_job`` (runs are only ever deleted with their job)."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(32))
    message: Mapped[str | None] = mapped_column(sa.Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class WebhookDelivery(Base):
    """A terminal-run webhook event (§5.15) and its delivery state; ``id`` is the ``webhook-id``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_due", "next_attempt_at",
                 postgresql_where=sa.text("state = 'pending'")),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    run_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(sa.String(32))
    url: Mapped[str] = mapped_column(sa.String(2048))
    body: Mapped[str] = mapped_column(sa.Text)  # the JSON envelope, identical on every attempt
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending|delivered|abandoned|failed
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

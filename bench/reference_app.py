"""The reference for bench/trigger.py: the least a trigger endpoint can do — one INSERT and one enqueue.

A tiny Flask WSGI app using SQLAlchemy Core and redis-py directly (no Sluice code), served by the same
gunicorn configuration as the API, so the ratio Sluice / reference isolates what Sluice's pipeline
(auth, validation, job lookup, idempotency/dedup/dependency checks, events, rendering) costs.

- ``POST /v1/jobs/<job>/trigger``: INSERT one row into ``ref_runs`` (the JSON body as payload) and RPUSH
  its id to a Redis list, then answer 201 with the id.
- ``POST /v1/jobs/<job>/trigger/bulk``: one multi-row INSERT of every item and one pipelined RPUSH.

Environment: ``REF_DATABASE_URL``, ``REF_REDIS_URL``. Served as ``gunicorn "bench.reference_app:create_app()"``;
the table is created at start.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import redis
import sqlalchemy as sa
from flask import Flask, Response, request

metadata = sa.MetaData()
ref_runs = sa.Table(
    "ref_runs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
QUEUE = "reference:runs"


def create_app() -> Flask:
    engine = sa.create_engine(os.environ["REF_DATABASE_URL"], pool_size=10, max_overflow=10)
    metadata.create_all(engine)
    client = redis.Redis.from_url(os.environ["REF_REDIS_URL"])
    app = Flask("reference")

    def row(job: str, item: object) -> dict[str, object]:
        return {"id": str(uuid.uuid4()), "job_id": job, "status": "queued",
                "payload": json.dumps(item, sort_keys=True, separators=(",", ":")), "created_at": datetime.now(UTC)}

    @app.post("/v1/jobs/<job>/trigger")
    def trigger(job: str) -> Response:
        new = row(job, request.get_json(silent=True) or {})
        with engine.begin() as conn:
            conn.execute(ref_runs.insert().values(**new))
        client.rpush(QUEUE, str(new["id"]))
        return Response(json.dumps({"id": new["id"], "status": "queued"}), 201, mimetype="application/json")

    @app.post("/v1/jobs/<job>/trigger/bulk")
    def bulk(job: str) -> Response:
        items = (request.get_json(silent=True) or {}).get("items") or []
        rows = [row(job, item) for item in items]
        with engine.begin() as conn:
            conn.execute(ref_runs.insert(), rows)
        pipe = client.pipeline(transaction=False)
        for new in rows:
            pipe.rpush(QUEUE, str(new["id"]))
        pipe.execute()
        body = {"results": [{"id": r["id"], "status": "queued"} for r in rows], "created": len(rows)}
        return Response(json.dumps(body), 201, mimetype="application/json")

    return app

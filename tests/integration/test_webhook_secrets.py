"""Webhook secrets at rest and in rotation: sealed in the job and every version, two secrets per job,
plain rows from before encryption, and the rotation of the key itself (``sluice secrets reencrypt``)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from shared.cli.main import main as sluice
from shared.db.migrate import alembic_config, upgrade
from shared.db.models import Job, JobVersion
from shared.webhooks.sealing import SecretBox, generate_key, is_sealed
from tests.conftest import PG_ADMIN_URL, PG_DB_NAME, TEST_SECRET_KEY, pg_url
from tests.factories import make_job
from tests.integration.jobs_support import SECRET, assert_error, create, opened

NEW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _patch(client, auth, ref, body):  # type: ignore[no-untyped-def]
    return client.patch(f"/v1/jobs/{ref}", json=body, headers=auth)


def _stored(session, job_id):  # type: ignore[no-untyped-def]
    session.expire_all()
    job = session.get(Job, job_id)
    versions = session.scalars(sa.select(JobVersion).where(JobVersion.job_id == job_id)
                               .order_by(JobVersion.version)).all()
    return job, versions


def test_secrets_are_sealed_in_the_job_and_every_version(client, auth, session, settings):
    job = create(client, auth, "sealed", webhook_secret=SECRET)
    _patch(client, auth, "sealed", {"description": "v2"})
    row, versions = _stored(session, job["id"])
    assert opened(settings, row.webhook_secret) == SECRET
    assert [opened(settings, v.config["webhook_secret"]) for v in versions] == [SECRET, SECRET]
    assert job["webhook_secret"] == "whsec_…XY9Q"
    assert client.get("/v1/jobs", headers=auth).json[0]["webhook_secret"] == "whsec_…XY9Q"
    assert {v["webhook_secret"] for v in client.get("/v1/jobs/sealed/versions", headers=auth).json} == {
        "whsec_…XY9Q"}


def test_sending_the_stored_secret_again_changes_nothing(client, auth):
    job = create(client, auth, "same", webhook_secret=SECRET)
    again = _patch(client, auth, "same", {"webhook_secret": SECRET}).json
    assert again["version"] == 1 and again["updated_at"] == job["updated_at"]


def test_rotation_in_one_patch_keeps_the_current_secret_as_previous(client, auth, session, settings):
    job = create(client, auth, "rot", webhook_secret=SECRET)
    assert job["webhook_secret_previous"] is None
    rotated = _patch(client, auth, "rot", {"webhook_secret": NEW_SECRET,
                                           "webhook_secret_previous": job["webhook_secret"]}).json
    assert (rotated["webhook_secret"], rotated["webhook_secret_previous"], rotated["version"]) == (
        "whsec_…LaSw", "whsec_…XY9Q", 2)
    row, versions = _stored(session, job["id"])
    assert (opened(settings, row.webhook_secret), opened(settings, row.webhook_secret_previous)) == (
        NEW_SECRET, SECRET)
    assert opened(settings, versions[-1].config["webhook_secret_previous"]) == SECRET
    # Echoing both masks changes nothing; once receivers have the new secret, the previous one goes.
    same = _patch(client, auth, "rot", {"webhook_secret": "whsec_…LaSw", "webhook_secret_previous": "whsec_…XY9Q"})
    assert same.json["version"] == 2
    done = _patch(client, auth, "rot", {"webhook_secret_previous": None}).json
    assert (done["webhook_secret"], done["webhook_secret_previous"], done["version"]) == ("whsec_…LaSw", None, 3)


def test_previous_secret_rules(client, auth):
    assert_error(client.post("/v1/jobs", json={"name": "x", "slug": "lone", "endpoint_url": "http://127.0.0.1:9/",
                                               "webhook_secret_previous": SECRET}, headers=auth),
                 400, "webhook_secret_previous: requires webhook_secret")
    assert_error(client.post("/v1/jobs", json={"name": "x", "slug": "twin", "endpoint_url": "http://127.0.0.1:9/",
                                               "webhook_secret": SECRET, "webhook_secret_previous": SECRET},
                             headers=auth), 400, "webhook_secret_previous: must differ from webhook_secret")
    both = create(client, auth, "both", webhook_secret=NEW_SECRET, webhook_secret_previous=SECRET)
    assert both["webhook_secret_previous"] == "whsec_…XY9Q"
    error = assert_error(_patch(client, auth, "both", {"webhook_secret_previous": "whsec_…zzzz"}), 422)
    assert error["errors"] == {"webhook_secret_previous": ["looks like a masked value; send the full secret"]}
    assert_error(_patch(client, auth, "both", {"webhook_secret_previous": "tiny"}), 422)
    assert_error(_patch(client, auth, "both", {"webhook_secret": None}), 400,
                 "webhook_secret_previous: requires webhook_secret")
    cleared = _patch(client, auth, "both", {"webhook_secret": None, "webhook_secret_previous": None}).json
    assert cleared["webhook_secret"] is None and cleared["webhook_secret_previous"] is None


def test_a_plain_row_from_before_encryption_reads_and_is_sealed_on_its_next_change(client, auth, session, settings):
    legacy = make_job(session, slug="legacy", webhook_secret=SECRET)
    session.commit()
    assert client.get("/v1/jobs/legacy", headers=auth).json["webhook_secret"] == "whsec_…XY9Q"
    _patch(client, auth, "legacy", {"description": "touched"})
    row, versions = _stored(session, legacy.id)
    assert opened(settings, row.webhook_secret) == SECRET and opened(settings, versions[-1].config[
        "webhook_secret"]) == SECRET
    assert versions[0].config["webhook_secret"] == SECRET  # old snapshots: until `sluice secrets reencrypt`


def test_key_rotation_with_reencrypt(client, auth, session, settings, monkeypatch, capsys):
    create(client, auth, "k1", webhook_secret=SECRET)
    create(client, auth, "k2", webhook_secret=NEW_SECRET, webhook_secret_previous=SECRET)
    make_job(session, slug="plain", webhook_secret=SECRET)
    session.commit()
    new_key = generate_key()
    monkeypatch.setenv("DATABASE_URL", pg_url())
    monkeypatch.setenv("SLUICE_SECRET_KEY", f"{new_key},{TEST_SECRET_KEY}")
    assert sluice(["secrets", "reencrypt"]) == 0
    assert "3 jobs, 3 version snapshots" in capsys.readouterr().out
    only_new = SecretBox([new_key])
    stored = [*session.scalars(sa.select(Job.webhook_secret)), *session.scalars(sa.select(Job.webhook_secret_previous)
                                                                                .where(Job.webhook_secret_previous
                                                                                       .is_not(None)))]
    snapshots = [c["webhook_secret"] for c in session.scalars(sa.select(JobVersion.config))]
    assert sorted(only_new.open(value) for value in stored) == sorted([SECRET, NEW_SECRET, SECRET, SECRET])
    assert all(is_sealed(value) for value in stored + snapshots)
    assert sorted(only_new.open(value) for value in snapshots) == sorted([SECRET, NEW_SECRET, SECRET])
    assert sluice(["secrets", "reencrypt"]) == 0  # nothing left to do
    assert "0 jobs, 0 version snapshots" in capsys.readouterr().out


def test_migration_seals_plain_secrets_when_a_key_is_set(pg_engine):
    name = f"{PG_DB_NAME}_sealing"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_url().rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url, "0003")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO jobs (id, project_id, name, slug, endpoint_url, webhook_secret, version, version_id, "
                "created_by, updated_by, created_at, updated_at, schedule_changed_at, tags, rate_limit_keys, "
                "default_run_metadata, retry_delays_secs, max_attempts, timeout_secs, timezone, enabled, "
                "retry_strategy, version_policy, backwards_compatible) VALUES ('01900000-0000-7000-8000-000000000001', "
                "'p', 'n', 's', 'http://x/', :secret, 1, 'ver_aaaaaaaaaaaa', 'a', 'a', now(), now(), now(), '{}', "
                "'[]', '{}', '[]', 3, 300, 'UTC', true, 'exponential', 'pin', false)"), {"secret": SECRET})
            conn.execute(sa.text(
                "INSERT INTO job_versions (id, job_id, version, config, created_by, created_at) VALUES "
                "('ver_aaaaaaaaaaaa', '01900000-0000-7000-8000-000000000001', 1, "
                "jsonb_build_object('webhook_secret', CAST(:secret AS text), 'name', 'n'), 'a', now())"),
                {"secret": SECRET})
        upgrade(url, secret_keys=(TEST_SECRET_KEY,))
        with engine.connect() as conn:
            secret, previous = conn.execute(sa.text("SELECT webhook_secret, webhook_secret_previous FROM jobs")).one()
            config = conn.execute(sa.text("SELECT config FROM job_versions")).scalar_one()
        box = SecretBox([TEST_SECRET_KEY])
        assert is_sealed(secret) and box.open(secret) == SECRET and previous is None
        assert is_sealed(config["webhook_secret"]) and box.open(config["webhook_secret"]) == SECRET
        assert config["name"] == "n"
        command.downgrade(alembic_config(url), "0003")  # and back: the column goes, the secrets stay sealed
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_secret_no_key_opens_is_replaced_by_a_new_one_and_never_a_500(client, auth, session):
    job = create(client, auth, "lost-key", webhook_secret=SECRET)
    lost = SecretBox([generate_key()])  # sealed under a key this deployment no longer has
    session.execute(sa.update(Job).where(Job.id == job["id"]).values(
        webhook_secret=lost.seal(SECRET), webhook_secret_previous=lost.seal(NEW_SECRET)))
    session.commit()
    refused = _patch(client, auth, "lost-key", {"description": "v2"})
    assert_error(refused, 409)
    assert "cannot be decrypted with the configured keys" in refused.json["message"]
    replaced = _patch(client, auth, "lost-key", {"webhook_secret": NEW_SECRET, "webhook_secret_previous": None})
    assert replaced.status_code == 200, replaced.json
    assert replaced.json["webhook_secret"] == "whsec_…LaSw" and replaced.json["webhook_secret_previous"] is None

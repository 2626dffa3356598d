"""webhook secrets sealed at rest; a second secret per job for rotations

``jobs.webhook_secret`` becomes text (a sealed secret is longer than the 1024 characters a plain one may
have) and ``jobs.webhook_secret_previous`` holds the second secret that signs during a rotation.

Data: when ``sluice db upgrade`` runs with a key (``SLUICE_SECRET_KEY`` / ``SLUICE_SECRET_KEY_FILE``), every
plain secret in the jobs and in their version snapshots is sealed here, in the migration's transaction.
Without a key the rows stay as they are: Sluice reads a plain secret as it is, seals it on the job's next
change, and ``sluice secrets reencrypt`` seals them all once a key is set.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 13:00:00
"""
import sqlalchemy as sa
from alembic import context, op

from shared.webhooks.sealing import SecretBox, is_sealed

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "webhook_secret", type_=sa.Text(), existing_type=sa.String(1024), existing_nullable=True)
    op.add_column("jobs", sa.Column("webhook_secret_previous", sa.Text(), nullable=True))
    keys = context.config.attributes.get("secret_keys") or ()
    if keys:
        seal_plain_secrets(op.get_bind(), SecretBox(keys))


def seal_plain_secrets(bind: sa.engine.Connection, box: SecretBox) -> None:
    jobs = bind.execute(sa.text("SELECT id, webhook_secret FROM jobs WHERE webhook_secret IS NOT NULL")).all()
    for job_id, secret in jobs:
        if not is_sealed(secret):
            bind.execute(sa.text("UPDATE jobs SET webhook_secret = :sealed WHERE id = :id"),
                         {"sealed": box.seal(secret), "id": job_id})
    versions = bind.execute(sa.text(
        "SELECT id, config->>'webhook_secret' FROM job_versions WHERE config->>'webhook_secret' IS NOT NULL")).all()
    for version_id, secret in versions:
        if not is_sealed(secret):
            bind.execute(sa.text("UPDATE job_versions SET config = jsonb_set(config, '{webhook_secret}', "
                                 "to_jsonb(CAST(:sealed AS text))) WHERE id = :id"),
                         {"sealed": box.seal(secret), "id": version_id})


def downgrade() -> None:
    op.drop_column("jobs", "webhook_secret_previous")

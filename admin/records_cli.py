"""`flask --app wsgi records prune`: drop records, idempotency keys and job requests past retention (offline)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from generation.request_records import RECORD_FOLDER
from jobs.service import REQUEST_FOLDER as JOB_REQUEST_FOLDER
from web.idempotency import FOLDER as IDEMPOTENCY_FOLDER

records = AppGroup("records", help="Request records and idempotency keys kept in the store.")
# An idempotency key is worth replaying for a client's retries, not for days.
IDEMPOTENCY_RETENTION_DAYS = 2
DAY_SECONDS = 86400


@records.command("prune")
@click.option("--days", type=click.IntRange(min=0), default=None,
              help="Keep records this many days (default: AIG_RECORD_RETENTION_DAYS).")
def prune_command(days: int | None) -> None:
    """Delete records older than the retention, and idempotency keys older than two days."""
    state = current_app.extensions["aig"]
    settings, store = state["settings"], state["services"].store
    if not hasattr(store, "prune"):
        click.echo("S3 store: the bucket's lifecycle rule (deploy/s3/lifecycle.json) expires records and "
                   "idempotency keys; nothing to prune here.", err=True)
        return
    days = settings.record_retention_days if days is None else days
    gone = store.prune(RECORD_FOLDER, days * DAY_SECONDS)
    keys = store.prune(IDEMPOTENCY_FOLDER, IDEMPOTENCY_RETENTION_DAYS * DAY_SECONDS)
    # A job's request is needed only while its job may run or be looked at: the job's own retention.
    job_requests = store.prune(JOB_REQUEST_FOLDER, settings.job_retention_days * DAY_SECONDS)
    click.echo(f"pruned {gone} request record(s) older than {days} day(s), {keys} idempotency file(s) and "
               f"{job_requests} job request(s)")

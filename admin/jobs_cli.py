"""`flask --app wsgi jobs ...`: create the AWS queue and table, show the webhook secret, count dead letters."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

jobs = AppGroup("jobs", help="Asynchronous jobs: their AWS resources and webhook secret.")


@jobs.command("create-aws")
@click.option("--queue", "queue_name", default="ai-image-generator-jobs", show_default=True,
              help="Name of the SQS queue (its dead-letter queue gets `-dead-letter` added).")
@click.option("--table", "table_name", default="ai-image-generator-jobs", show_default=True,
              help="Name of the DynamoDB table.")
def create_aws_command(queue_name: str, table_name: str) -> None:
    """Create the SQS queue (with a dead-letter queue) and the DynamoDB table (with TTL); print the settings."""
    from backends.aws_clients import dynamodb_client, sqs_client
    from jobs.aws_setup import create_job_resources

    settings = current_app.extensions["aig"]["settings"]
    made = create_job_resources(sqs_client(), dynamodb_client(), queue_name, table_name,
                                max_receives=settings.job_max_receives,
                                visibility_seconds=settings.job_visibility_seconds,
                                queue_seconds=settings.job_queue_seconds)
    click.echo(f"# dead-letter queue: {made['dead_letter_queue_url']}", err=True)
    click.echo(f"AIG_JOBS=aws\nAIG_SQS_QUEUE_URL={made['queue_url']}\nAIG_DYNAMODB_TABLE={made['table']}")


@jobs.command("webhook-secret")
def webhook_secret_command() -> None:
    """Print the webhook secret (with API keys on, each key's own is at GET /webhooks/secret)."""
    from web.jobs_routes import job_service

    click.echo(job_service().master_secret())

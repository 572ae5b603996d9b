"""`flask --app wsgi keys add|list|revoke`: manage the API keys of AIG_API_KEYS_FILE."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from admin.api_keys import KeyFileError, add_key, read_keys, revoke_key

keys = AppGroup("keys", help="Manage API keys (stored hashed in AIG_API_KEYS_FILE).")


def _keys_file() -> str:
    path = current_app.extensions["aig"]["settings"].api_keys_file
    if not path:
        raise click.ClickException("AIG_API_KEYS_FILE is not set: name the keys file first")
    return path


@keys.command("add")
@click.argument("name")
def add_command(name: str) -> None:
    """Add a key called NAME and print it: it is shown this once and never stored."""
    try:
        key = add_key(_keys_file(), name)
    except (KeyFileError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(key)
    click.echo(f"Key {name!r} added; copy it now, it cannot be shown again.", err=True)


@keys.command("list")
def list_command() -> None:
    """List key names and when they were made (the keys themselves are not kept)."""
    try:
        entries = read_keys(_keys_file())
    except (KeyFileError, OSError) as error:
        raise click.ClickException(str(error)) from None
    for entry in entries:
        click.echo(f"{entry.name}\t{entry.created}")


@keys.command("revoke")
@click.argument("name")
def revoke_command(name: str) -> None:
    """Revoke the key called NAME; running services refuse it at their next request."""
    try:
        revoke_key(_keys_file(), name)
    except (KeyFileError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Key {name!r} revoked.", err=True)

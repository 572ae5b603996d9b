"""Offline jobs: the queue and the job table in one SQLite file (WAL), shared by web and worker processes."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from generation.errors import JobsUnavailable, KeyExists
from jobs.states import Message, When

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, document TEXT NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, dead INTEGER NOT NULL DEFAULT 0, sent_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (dead, visible_at);
"""
# A long poll re-reads the table this often while it waits.
POLL_SECONDS = 0.05
# Dead messages are kept as long as SQS keeps a dead letter (14 days), for an operator to look at.
DEAD_LETTER_SECONDS = 14 * 86400


class SqliteDatabase:
    """One SQLite file; a connection per thread and process (a connection must not cross either)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._local = threading.local()
        self.connection().executescript(SCHEMA)  # executescript commits by itself

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, made on first use (and anew after a fork)."""
        held = getattr(self._local, "held", None)
        if held is None or held[0] != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are begun explicitly, IMMEDIATE, so two writers never
            # both read a row and then race to write it.
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a job answered 202 survives a power cut too (NORMAL would survive a process crash only).
            connection.execute("PRAGMA synchronous=FULL")
            held = (os.getpid(), connection)
            self._local.held = held
        return held[1]

    def transaction(self):
        """A write transaction that takes the file's write lock at once."""
        return _Transaction(self.connection())


class _Transaction:
    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:  # locked past the busy time-out, disk full, ...
            raise JobsUnavailable(f"the job database could not be written: {error}") from error
        return self.connection

    def __exit__(self, kind, value, trace) -> None:
        if kind is None:
            try:
                self.connection.execute("COMMIT")
                return
            except sqlite3.OperationalError as error:
                value = error  # not committed: roll back below, so this connection does not keep the lock
        if self.connection.in_transaction:  # SQLite may have rolled back by itself (disk full, I/O error)
            try:
                self.connection.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
        if isinstance(value, sqlite3.OperationalError):
            raise JobsUnavailable(f"the job database failed: {value}") from value


class SqliteJobTable:
    """Job documents as JSON rows; a conditional write reads and writes inside one IMMEDIATE transaction."""

    def __init__(self, database: SqliteDatabase):
        self.database = database

    def create(self, job: dict) -> None:
        """Write a new job; KeyExists when its id is taken."""
        try:
            with self.database.transaction() as db:
                db.execute("INSERT INTO jobs (job_id, document, expires_at) VALUES (?, ?, ?)",
                           (job["job_id"], json.dumps(job), job.get("expires_at")))
        except sqlite3.IntegrityError:
            raise KeyExists(job["job_id"]) from None

    def get(self, job_id: str) -> dict | None:
        """The job's document, or None (also once its retention has passed)."""
        row = self.database.connection().execute(
            "SELECT document FROM jobs WHERE job_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (job_id, time.time())).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, job_id: str, changes: dict, when: tuple[When, ...], append: dict | None = None) -> dict | None:
        """Apply `changes` and `append` if any condition holds; the new document, else None."""
        with self.database.transaction() as db:
            row = db.execute("SELECT document FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = json.loads(row[0])
            if not any(condition.holds(job) for condition in when):
                return None
            job.update(changes)
            for name, items in (append or {}).items():
                job[name] = list(job.get(name) or []) + list(items)
            db.execute("UPDATE jobs SET document = ?, expires_at = ? WHERE job_id = ?",
                       (json.dumps(job), job.get("expires_at"), job_id))
        return job

    def purge(self, now: float | None = None) -> int:
        """Delete jobs whose retention has passed (DynamoDB's TTL does this in AWS), and dead messages
        older than SQS keeps a dead letter; how many jobs went."""
        now = now or time.time()
        with self.database.transaction() as db:
            db.execute("DELETE FROM messages WHERE dead = 1 AND sent_at <= ?", (now - DEAD_LETTER_SECONDS,))
            return db.execute("DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)).rowcount

    def check(self) -> None:
        """Raise if the file cannot be read."""
        self.database.connection().execute("SELECT 1 FROM jobs LIMIT 1").fetchall()


class SqliteQueue:
    """A durable at-least-once queue: hidden while delivered, delivered again unless deleted, dead after N tries."""

    def __init__(self, database: SqliteDatabase, max_receives: int):
        self.database = database
        self.max_receives = max_receives

    def send(self, body: str, delay_seconds: int = 0) -> None:
        """Queue a message, hidden for `delay_seconds`."""
        now = time.time()
        with self.database.transaction() as db:
            db.execute("INSERT INTO messages (body, visible_at, sent_at) VALUES (?, ?, ?)",
                       (body, now + delay_seconds, now))

    def receive(self, max_messages: int, wait_seconds: float, visibility_seconds: int) -> list[Message]:
        """Up to `max_messages`, long-polling up to `wait_seconds`; each hidden for `visibility_seconds`."""
        give_up = time.monotonic() + wait_seconds
        while True:
            messages = self._take(max_messages, visibility_seconds)
            if messages or time.monotonic() >= give_up:
                return messages
            time.sleep(POLL_SECONDS)

    def _take(self, max_messages: int, visibility_seconds: int) -> list[Message]:
        now = time.time()
        taken: list[Message] = []
        # A plain read first: an idle worker polling must not take the write lock twenty times a second.
        ready = self.database.connection().execute(
            "SELECT 1 FROM messages WHERE dead = 0 AND visible_at <= ? LIMIT 1", (now,)).fetchone()
        if ready is None:
            return taken
        with self.database.transaction() as db:
            rows = db.execute("SELECT id, body, receive_count FROM messages WHERE dead = 0 AND visible_at <= ? "
                              "ORDER BY visible_at, id LIMIT ?", (now, max_messages * 2)).fetchall()
            for row_id, body, count in rows:
                if count >= self.max_receives:
                    # As SQS's redrive policy does: delivered max_receives times and never deleted.
                    db.execute("UPDATE messages SET dead = 1, receipt = NULL WHERE id = ?", (row_id,))
                    continue
                if len(taken) == max_messages:
                    break
                receipt = f"{row_id}:{secrets.token_hex(8)}"
                db.execute("UPDATE messages SET receive_count = ?, receipt = ?, visible_at = ? WHERE id = ?",
                           (count + 1, receipt, now + visibility_seconds, row_id))
                taken.append(Message(body, receipt, count + 1))
        return taken

    def delete(self, receipt: str) -> None:
        """Remove a delivered message (a stale receipt deletes nothing, as a newer delivery holds it)."""
        with self.database.transaction() as db:
            db.execute("DELETE FROM messages WHERE receipt = ?", (receipt,))

    def set_visibility(self, receipt: str, seconds: int) -> None:
        """Hide a delivered message for `seconds` from now."""
        with self.database.transaction() as db:
            db.execute("UPDATE messages SET visible_at = ? WHERE receipt = ?", (time.time() + seconds, receipt))

    def dead_letters(self) -> list[str]:
        """The bodies of messages moved to the dead-letter side (for operators and tests)."""
        rows = self.database.connection().execute("SELECT body FROM messages WHERE dead = 1 ORDER BY id")
        return [body for (body,) in rows.fetchall()]

    def depth(self) -> int:
        """Messages not yet deleted and not dead."""
        return self.database.connection().execute("SELECT COUNT(*) FROM messages WHERE dead = 0").fetchone()[0]

    def check(self) -> None:
        """Raise if the file cannot be read."""
        self.database.connection().execute("SELECT 1 FROM messages LIMIT 1").fetchall()

"""gunicorn's own error answers (a request it cannot parse: 400, 414, 431, ...) in the service's JSON shape."""

from __future__ import annotations

import json
import uuid


def write_problem(sock, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for gunicorn.util.write_error: the same answer, as application/problem+json.

    gunicorn answers these before the app sees the request, so they carry a request id of their own.
    """
    from gunicorn.util import write_nonblock

    code = reason.lower().replace(" ", "_")
    body = json.dumps({"type": "about:blank", "title": reason, "status": status_int, "detail": mesg or reason,
                       "code": code, "request_id": uuid.uuid4().hex}) + "\n"
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body.encode())}\r\n\r\n")
    write_nonblock(sock, (head + body).encode("latin1", "replace"))


def install(_worker=None) -> None:
    """gunicorn post_worker_init hook: answer gunicorn's own errors as JSON problems."""
    import gunicorn.util

    gunicorn.util.write_error = write_problem

"""A fault-injecting HTTP proxy in front of an S3 server (moto's), failing a chosen share of uploads."""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers that describe one hop, not the request: never forwarded.
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "expect"}
FAULTS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class FaultyS3Proxy:
    """Forwards every request to `upstream`; fails `put_failure_rate` of PUTs whose key ends in `suffix`."""

    def __init__(self, upstream: str, *, put_failure_rate: float = 0.0, status: int = 503, suffix: str = ".png",
                 seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.configure(put_failure_rate=put_failure_rate, status=status, suffix=suffix)
        self.puts_seen = 0
        self.puts_failed = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where clients should send their S3 requests."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def configure(self, *, put_failure_rate: float, status: int = 503, suffix: str = ".png") -> None:
        """Change the share of failed uploads, their status (500 or 503) and which keys they hit."""
        if status not in FAULTS or not 0.0 <= put_failure_rate <= 1.0:
            raise ValueError("put_failure_rate must be 0..1 and status one of 500, 503")
        with self.lock:
            self.put_failure_rate, self.status, self.suffix = put_failure_rate, status, suffix

    def start(self) -> FaultyS3Proxy:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def should_fail(self, method: str, path: str) -> bool:
        """Draw whether this request gets a fault, and count it."""
        if method != "PUT" or not path.split("?")[0].endswith(self.suffix):
            return False
        with self.lock:
            self.puts_seen += 1
            failed = self.random.random() < self.put_failure_rate
            self.puts_failed += failed
            return failed


def _handler_for(proxy: FaultyS3Proxy):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so that botocore's `Expect: 100-continue` gets its interim answer at once.
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the test output needs no access log
            pass

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if proxy.should_fail(self.command, self.path):
                self._fault(proxy.status)
                return
            connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _fault(self, status: int):
            code, message = FAULTS[status]
            data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>FAULTY0PROXY</RequestId></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler

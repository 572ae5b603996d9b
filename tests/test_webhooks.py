"""Signed webhooks: secrets, signatures, the address rules, and deliveries to a real local receiver."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import certifi
import pytest

from jobs.webhooks import (
    Attempt,
    deliver,
    new_secret,
    parse_networks,
    secret_for_owner,
    sign,
    url_problem,
    verify,
)
from tests.servers import free_port

pytestmark = pytest.mark.integration

LOOPBACK = parse_networks("127.0.0.0/8, ::1/128")
SECRET = new_secret()
BODY = b'{"job_id": "job_1", "state": "succeeded"}'


@dataclass
class Seen:
    """One request as the receiver got it."""

    path: str
    headers: dict
    body: bytes


@dataclass
class Receiver:
    """A local HTTP receiver that records every request and answers as told."""

    server: ThreadingHTTPServer
    url: str
    status: int = 204
    delay: float = 0.0  # seconds to wait before answering, or after the first part of a long answer
    answer: int = 0  # bytes of a long answer to send first (it promises 10 MB and stalls)
    seen: list[Seen] = field(default_factory=list)


def start_receiver(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Receiver:
    """Serve a Receiver on a free port of `host` in a thread."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the name http.server looks for
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.seen.append(Seen(self.path, dict(self.headers), body))
            if receiver.answer:
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(10 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b"x" * receiver.answer)
                self.wfile.flush()
                time.sleep(receiver.delay)
                return
            time.sleep(receiver.delay)
            self.send_response(receiver.status)
            if 300 <= receiver.status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = Server((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    bound, port = server.server_address[:2]
    receiver = Receiver(server, f"{'https' if tls else 'http'}://{f'[{bound}]' if ':' in bound else bound}:{port}"
                                "/hooks/done?from=test")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def receiver():
    """A receiver on 127.0.0.1."""
    receiver = start_receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@dataclass
class FakeDNS:
    """Answers for chosen names (one list of addresses per lookup, the last repeated); other names resolve as usual."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def dns(monkeypatch):
    """A FakeDNS in place of socket.getaddrinfo; no test reaches a real name server."""
    fake, real = FakeDNS(), socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in fake.answers:
            return real(host, port, *args, **kwargs)
        fake.lookups.append(host)
        queue = fake.answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


def signed_headers(secret=SECRET, webhook_id="msg_1", timestamp=None, body=BODY):
    """The three webhook headers for a message signed now (or at `timestamp`)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body)}


def test_sign_matches_the_standard_webhooks_test_vector():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_a_signed_message_whatever_the_header_case():
    headers = {name.title(): value for name, value in signed_headers().items()}
    assert "Webhook-Signature" in headers
    assert verify(SECRET, headers, BODY)


def test_verify_accepts_any_matching_v1_signature_in_the_list():
    headers = signed_headers()
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1,{base64.b64encode(b'x' * 32).decode()} {good} v2,abc"
    assert verify(SECRET, headers, BODY)


@pytest.mark.parametrize("change", [
    "tampered body", "wrong secret", "old timestamp", "future timestamp", "no signature", "no id",
    "timestamp not a number", "other version", "id changed",
])
def test_verify_refuses(change):
    now = time.time()
    headers, body, secret = signed_headers(), BODY, SECRET
    if change == "tampered body":
        body = BODY.replace(b"succeeded", b"failed")
    elif change == "wrong secret":
        secret = new_secret()
    elif change == "old timestamp":
        headers = signed_headers(timestamp=int(now) - 301)
    elif change == "future timestamp":
        headers = signed_headers(timestamp=int(now) + 301)
    elif change == "no signature":
        del headers["webhook-signature"]
    elif change == "no id":
        del headers["webhook-id"]
    elif change == "timestamp not a number":
        headers["webhook-timestamp"] = headers["webhook-timestamp"] + ".5"
    elif change == "other version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,")
    elif change == "id changed":
        headers["webhook-id"] = "msg_2"
    assert not verify(secret, headers, body, now=now)


def test_verify_tolerance_is_adjustable():
    headers = signed_headers(timestamp=1_000_000)
    assert verify(SECRET, headers, BODY, now=1_000_299)
    assert not verify(SECRET, headers, BODY, now=1_000_299, tolerance=60)


def test_new_secret_is_whsec_and_32_random_bytes():
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32


def test_a_secret_without_prefix_is_its_own_utf8_bytes():
    expected = hmac.new("my own sécret".encode(), b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert sign("my own sécret", "msg_1", 1700000000, BODY) == "v1," + base64.b64encode(expected).decode()


@pytest.mark.parametrize("secret", [
    "", "whsec_", "whsec_not*base64!", "whsec_" + base64.b64encode(b"k" * 16).decode(),
    "whsec_" + base64.b64encode(b"k" * 65).decode(),
])
def test_a_malformed_secret_is_refused(secret):
    with pytest.raises(ValueError, match="secret"):
        sign(secret, "msg_1", 1, BODY)


def test_secret_for_owner_is_stable_distinct_and_derived_as_documented():
    master = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    alice, bob = secret_for_owner(master, "alice"), secret_for_owner(master, "bob")
    assert alice == secret_for_owner(master, "alice")
    assert len({alice, bob, master, secret_for_owner(new_secret(), "alice")}) == 4
    key = base64.b64decode(master.removeprefix("whsec_"))
    derived = hmac.new(key, b"webhook-secret\0alice", hashlib.sha256).digest()
    assert alice == "whsec_" + base64.b64encode(derived).decode()
    assert secret_for_owner(master, "") == master
    headers = signed_headers(secret=alice)
    assert verify(alice, headers, BODY) and not verify(bob, headers, BODY) and not verify(master, headers, BODY)


@pytest.mark.parametrize(("status", "delivered"), [(200, True), (204, True), (299, True), (302, False),
                                                   (500, False), (None, False)])
def test_attempt_is_delivered_only_on_a_2xx(status, delivered):
    attempt = Attempt(at=1.5, status=status, error=None if delivered else "no", duration_ms=2.0)
    assert attempt.delivered() is delivered
    assert attempt.as_json() == {"at": 1.5, "status": status, "error": attempt.error, "duration_ms": 2.0}


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.9.9.9:8080/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://100.64.0.1/", "shared"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://localhost:8080/", "resolves to a loopback"),
    ("http://0x7f.1/", "resolves to a loopback"),  # a spelling inet_aton takes for 127.0.0.1
])
def test_url_problem_refuses_non_public_addresses(url, kind):
    problem = url_problem(url)
    assert problem is not None and kind in problem


@pytest.mark.parametrize("url", ["https://93.184.215.14/hooks", "http://93.184.215.14:8080/a?b=c",
                                 "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hooks"])
def test_url_problem_allows_a_public_literal(url):
    assert url_problem(url) is None


def test_url_problem_judges_every_address_a_name_resolves_to(dns):
    dns.answers["hooks.example.com"] = [["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]]
    dns.answers["mixed.example.com"] = [["93.184.215.14", "10.0.0.7"]]
    assert url_problem("https://hooks.example.com/x") is None
    problem = url_problem("https://mixed.example.com/x")
    assert problem == "mixed.example.com resolves to a private address; webhooks go to public addresses only"
    assert "10.0.0.7" not in problem  # the caller does not learn the internal address


def test_url_problem_refuses_a_name_that_does_not_resolve():
    assert url_problem("https://no-such-host.invalid/hooks") == "no-such-host.invalid does not resolve"


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://93.184.215.14/x", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("93.184.215.14/x", "scheme"),
    ("https://user:pass@93.184.215.14/x", "user name or password"),
    ("https://token@93.184.215.14/x", "user name or password"),
    ("https:///x", "no host"),
    ("https://93.184.215.14:0/x", "port"),
    ("https://93.184.215.14:70000/x", "port"),
    ("https://93.184.215.14:http/x", "not valid"),
    ("https://[::1/x", "not valid"),
    ("https://93.184.215.14/" + "a" * 2048, "longer than 2048"),
    ("https://93.184.215.14/a b", "spaces or control"),
    ("https://93.184.215.14/a\r\nX-Evil: 1", "spaces or control"),
])
def test_url_problem_refuses_malformed_urls(url, words):
    problem = url_problem(url)
    assert problem is not None and words in problem


def test_allowed_networks_let_their_addresses_through_and_no_others():
    allowed = parse_networks("127.0.0.0/8")
    assert url_problem("http://127.0.0.1:9000/", allowed) is None
    assert url_problem("http://[::ffff:127.0.0.2]/", allowed) is None
    assert url_problem("http://localhost/", allowed) is None
    assert "loopback" in url_problem("http://[::1]/", allowed)
    assert "private" in url_problem("http://10.0.0.1/", allowed)


def test_parse_networks_reads_a_list_and_names_a_bad_part():
    assert parse_networks(" 127.0.0.0/8, 10.1.2.3/16,::1 ") == (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("::1/128"))
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks("127.0.0.0/8, 10.0.0.0/33")


def test_deliver_posts_a_message_the_receiver_verifies(receiver):
    before = time.time()
    attempt = deliver(receiver.url, BODY, SECRET, "msg_42", allowed_networks=LOOPBACK)
    assert attempt.delivered() and attempt.status == 204 and attempt.error is None
    assert before <= attempt.at <= time.time() and attempt.duration_ms > 0
    [seen] = receiver.seen
    assert seen.body == BODY and seen.path == "/hooks/done?from=test"
    assert verify(SECRET, seen.headers, seen.body)
    assert not verify(new_secret(), seen.headers, seen.body)
    assert seen.headers["webhook-id"] == "msg_42"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "ai-image-generator-webhooks"
    assert seen.headers["Host"] == receiver.url.split("/")[2]


def test_deliver_keeps_the_id_and_signs_each_attempt_anew(receiver):
    first = deliver(receiver.url, BODY, SECRET, "msg_7", allowed_networks=LOOPBACK)
    time.sleep(1.05)  # the timestamp has whole seconds
    second = deliver(receiver.url, BODY, SECRET, "msg_7", allowed_networks=LOOPBACK)
    assert first.delivered() and second.delivered()
    one, two = (seen.headers for seen in receiver.seen)
    assert one["webhook-id"] == two["webhook-id"] == "msg_7"
    assert one["webhook-timestamp"] != two["webhook-timestamp"]
    assert one["webhook-signature"] != two["webhook-signature"]


def test_deliver_refuses_loopback_without_the_allow_list_and_sends_nothing(receiver):
    attempt = deliver(receiver.url, BODY, SECRET, "msg_1")
    assert attempt.status is None and not attempt.delivered()
    assert attempt.error == "127.0.0.1 is a loopback address; webhooks go to public addresses only"
    assert receiver.seen == []


def test_deliver_reports_a_failing_receiver(receiver):
    receiver.status = 500
    attempt = deliver(receiver.url, BODY, SECRET, "msg_1", allowed_networks=LOOPBACK)
    assert (attempt.status, attempt.error, attempt.delivered()) == (500, "the receiver answered 500", False)
    assert len(receiver.seen) == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_deliver_does_not_follow_redirects(receiver, status):
    receiver.status = status
    attempt = deliver(receiver.url, BODY, SECRET, "msg_1", allowed_networks=LOOPBACK)
    assert (attempt.status, attempt.error) == (status, f"redirects are not followed (status {status})")
    assert [seen.path for seen in receiver.seen] == ["/hooks/done?from=test"]


def test_deliver_gives_up_on_a_slow_receiver(receiver):
    receiver.delay = 1.5
    attempt = deliver(receiver.url, BODY, SECRET, "msg_1", allowed_networks=LOOPBACK, timeout=0.3)
    assert (attempt.status, attempt.error) == (None, "timed out after 0.3 s")
    assert attempt.duration_ms < 1400


def test_deliver_reports_a_closed_port():
    attempt = deliver(f"http://127.0.0.1:{free_port()}/hooks", BODY, SECRET, "msg_1", allowed_networks=LOOPBACK)
    assert attempt.status is None and attempt.error == "could not connect: connection refused"


def test_deliver_pins_the_address_it_checked(receiver, dns):
    port = receiver.server.server_address[1]
    # The first answer is checked and used; a second lookup would get a private address (DNS rebinding).
    dns.answers["hooks.example.test"] = [["127.0.0.1"], ["10.0.0.9"]]
    attempt = deliver(f"http://hooks.example.test:{port}/in", BODY, SECRET, "msg_1", allowed_networks=LOOPBACK)
    assert attempt.delivered(), attempt.error
    assert dns.lookups == ["hooks.example.test"]
    assert receiver.seen[0].headers["Host"] == f"hooks.example.test:{port}"


def test_deliver_checks_the_addresses_again_before_each_attempt(receiver, dns):
    port = receiver.server.server_address[1]
    dns.answers["hooks.example.test"] = [["93.184.215.14"], ["93.184.215.14", "127.0.0.1"]]
    url = f"http://hooks.example.test:{port}/in"
    assert url_problem(url) is None  # at submit time the name was public
    attempt = deliver(url, BODY, SECRET, "msg_1")
    assert attempt.error == "hooks.example.test resolves to a loopback address; webhooks go to public addresses only"
    assert receiver.seen == []


def test_deliver_reports_a_name_that_no_longer_resolves(dns):
    dns.answers["gone.example.test"] = [[]]
    attempt = deliver("https://gone.example.test/in", BODY, SECRET, "msg_1")
    assert (attempt.status, attempt.error) == (None, "gone.example.test does not resolve")


def test_deliver_over_ipv6_loopback():
    try:
        receiver = start_receiver("::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        attempt = deliver(receiver.url, BODY, SECRET, "msg_6", allowed_networks=LOOPBACK)
        assert attempt.delivered(), attempt.error
        assert verify(SECRET, receiver.seen[0].headers, receiver.seen[0].body)
        assert receiver.seen[0].headers["Host"] == f"[::1]:{receiver.server.server_address[1]}"
        assert "loopback" in deliver(receiver.url, BODY, SECRET, "msg_6").error
        assert len(receiver.seen) == 1
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def issue_certificates(folder, name: str):
    """A throw-away CA (its PEM path) and a server context whose certificate is for `name` only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, *, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key.public_key(), ca_key,
                       ca=False, san=name)
    ca_path, chain_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_path, key_path)
    return str(ca_path), context


def test_deliver_over_https_checks_the_certificate_against_the_url_name(tmp_path, dns, monkeypatch):
    ca_path, context = issue_certificates(tmp_path, "hooks.example.test")
    monkeypatch.setattr(certifi, "where", lambda: ca_path)
    receiver = start_receiver(tls=context)
    port = receiver.server.server_address[1]
    dns.answers["hooks.example.test"] = dns.answers["other.example.test"] = [["127.0.0.1"]]
    try:
        attempt = deliver(f"https://hooks.example.test:{port}/in", BODY, SECRET, "msg_s", allowed_networks=LOOPBACK)
        assert attempt.delivered(), attempt.error
        assert verify(SECRET, receiver.seen[0].headers, receiver.seen[0].body)
        # Same address, a name the certificate is not for: the pinned IP must not weaken the name check.
        wrong = deliver(f"https://other.example.test:{port}/in", BODY, SECRET, "msg_s", allowed_networks=LOOPBACK)
        assert wrong.status is None and wrong.error.startswith("the TLS handshake failed")
        assert len(receiver.seen) == 1
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_deliver_reads_little_of_a_long_answer(receiver):
    receiver.status, receiver.answer, receiver.delay = 200, 256 * 1024, 2.0  # and then, never the rest
    attempt = deliver(receiver.url, BODY, SECRET, "msg_1", allowed_networks=LOOPBACK, timeout=1.5)
    assert attempt.delivered(), attempt.error
    assert attempt.duration_ms < 1000  # it stopped after 64 KiB instead of waiting for the promised 10 MB

"""Tiny raw-socket HTTP servers on 127.0.0.1 for misbehaviour no real framework will produce on demand.

Each ``RawServer`` runs ``handler(conn, server)`` on its own thread per accepted connection and records
every request it read. Handlers may block on ``server.stopped`` to model an endpoint that never answers;
``stop()`` releases them, so tests never leak threads past their fixture.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

Handler = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """Listen on ``host``:``port`` (127.0.0.1 and a free port by default); optionally TLS with ``tls_context``.

    ``requests`` holds every request read, ``connections`` counts the connections accepted.
    """

    def __init__(self, handler: Handler, tls_context: ssl.SSLContext | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.handler = handler
        self.tls_context = tls_context
        self.host = host
        self.requests: list[bytes] = []
        self.connections = 0
        self.stopped = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepted: list[socket.socket] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> RawServer:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self.tls_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for conn in self._accepted:  # wakes handlers blocked reading a kept-alive connection
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            self.connections += 1
            self._accepted.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            self.handler(conn, self)
        except (OSError, ssl.SSLError):
            pass  # the client hung up or refused our certificate: that is what many tests provoke
        finally:
            conn.close()


def read_request(conn: socket.socket, server: RawServer) -> bytes:
    """Read one request (head + Content-Length body), record it and return it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    request = head + b"\r\n\r\n" + body
    server.requests.append(request)
    return request


def respond(raw: bytes) -> Handler:
    """Handler: read the request, send ``raw`` verbatim, close."""
    def handler(conn: socket.socket, server: RawServer) -> None:
        read_request(conn, server)
        conn.sendall(raw)
    return handler


def respond_then_hang(raw: bytes) -> Handler:
    """Handler: send ``raw`` and keep the connection open until the server stops."""
    def handler(conn: socket.socket, server: RawServer) -> None:
        read_request(conn, server)
        conn.sendall(raw)
        server.stopped.wait()
    return handler


def keep_alive(body: bytes = b"ok", *, answers_per_connection: int | None = None) -> Handler:
    """Handler: answer every request on the connection with 200 and ``body``, HTTP/1.1 keep-alive.

    With ``answers_per_connection`` the server reads the next request after that many and closes without
    answering it, as a server closing an idle connection just as a request arrives would.
    """
    def handler(conn: socket.socket, server: RawServer) -> None:
        answered = 0
        while not server.stopped.is_set():
            if not read_request(conn, server):
                return
            if answers_per_connection is not None and answered >= answers_per_connection:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            answered += 1
    return handler


def never_answer(conn: socket.socket, server: RawServer) -> None:
    read_request(conn, server)
    server.stopped.wait()


def close_without_answer(conn: socket.socket, server: RawServer) -> None:
    read_request(conn, server)


def reset_after_request(conn: socket.socket, server: RawServer) -> None:
    read_request(conn, server)
    # SO_LINGER with a zero timeout turns close() into a TCP RST instead of an orderly FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def trickle_body(interval_secs: float, total: int = 100) -> Handler:
    """Handler: headers at once, then one body byte every ``interval_secs``."""
    def handler(conn: socket.socket, server: RawServer) -> None:
        read_request(conn, server)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total):
            if server.stopped.wait(interval_secs):
                return
            conn.sendall(b"x")
    return handler


def paced(delay_before_status: float, parts: list[bytes], gap_secs: float) -> Handler:
    """Handler: wait, send the head + first part, then each further part after ``gap_secs``."""
    def handler(conn: socket.socket, server: RawServer) -> None:
        read_request(conn, server)
        server.stopped.wait(delay_before_status)
        for index, part in enumerate(parts):
            if index:
                server.stopped.wait(gap_secs)
            conn.sendall(part)
    return handler


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Write a self-signed certificate for ``names`` (DNS names and IPs) and its key; return the paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TunnelProxy:
    """A small HTTP proxy on 127.0.0.1: ``CONNECT`` tunnels and absolute-form forwarding.

    Every host name "resolves" to 127.0.0.1 here (the proxy does the final lookup, as a real one would with
    its own DNS). ``seen`` records each request line the proxy received; ``refuse`` answers 403 instead.
    """

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.seen: list[str] = []
        self._server = RawServer(self._handle)
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TunnelProxy:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handle(self, conn: socket.socket, server: RawServer) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ", 2)
        self.seen.append(f"{method} {target}")
        if self.refuse:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        if method == "CONNECT":
            upstream = socket.create_connection(("127.0.0.1", int(target.rsplit(":", 1)[1])))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = head.partition(b"\r\n\r\n")[2]
        else:
            parts = urlsplit(target)
            upstream = socket.create_connection(("127.0.0.1", parts.port or 80))
            origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            first = f"{method} {origin_form} {version}\r\n".encode("latin-1") + rest
        with upstream:
            if first:
                upstream.sendall(first)
            _pipe(conn, upstream, server.stopped)


def _pipe(a: socket.socket, b: socket.socket, stopped: threading.Event) -> None:
    """Copy bytes both ways until either side closes or the server stops."""
    peers = {a: b, b: a}
    while not stopped.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.1)
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)

"""Tiny raw-socket HTTP servers on 127.0.0.1 for misbehaviour no real framework will produce on demand.

Each ``RawServer`` runs ``handler(conn, server)`` on its own thread per accepted connection and records
every request it read. Handlers may block on ``server.stopped`` to model an endpoint that never answers;
``stop()`` releases them, so tests never leak threads past their fixture.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """Listen on 127.0.0.1:<free port>; optionally TLS with ``tls_context``."""

    def __init__(self, handler: Handler, tls_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls_context = tls_context
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> RawServer:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self.tls_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
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

"""A TLS-terminating relay on loopback, for tests over HTTPS (:class:`MotoDynamoDB`'s ``tls``).

moto's servers speak plain HTTP; DynamoDB speaks HTTPS. :class:`TlsFront` takes TLS
connections on a free loopback port, with a certificate for ``127.0.0.1`` made for it
(self-signed, in :attr:`TlsFront.ca_file`: the CA bundle a client must trust), and relays
each one's bytes to the server behind it on a plain connection of its own. It holds no
state of HTTP: a connection the server closes is closed to the client (with no TLS
``close_notify``, as a server that drops a connection), and one the client closes is closed
to the server. :meth:`TlsFront.hold_handshakes` keeps new clients in their TLS handshake
(their ``ClientHello`` sent, unanswered) until :meth:`TlsFront.restore`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading

__all__ = ["TlsFront"]

#: The most a relay reads at once.
_CHUNK = 65536


def _certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for ``127.0.0.1`` and its key, written in ``directory``
    (cryptography comes with moto's server mode)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    # Valid from a day before to a day after it is made: a clock a little off does not matter.
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = os.path.join(directory, "cert.pem")
    key_file = os.path.join(directory, "key.pem")
    with open(cert_file, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_file, key_file


class TlsFront:
    """TLS on a free port of ``host`` in front of ``target_host:target_port`` (see the
    module's docstring); :meth:`close` ends every relay."""

    def __init__(self, host: str, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._directory = tempfile.mkdtemp(prefix="tls-front-")
        cert_file, key_file = _certificate(self._directory)
        self.ca_file = cert_file
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert_file, key_file)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._handshakes = threading.Event()
        self._handshakes.set()
        self._waiting = 0
        self._closed = False
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept, name=f"TlsFront:{self.port}", daemon=True
        )
        self._acceptor.start()

    @property
    def holding(self) -> int:
        """How many clients :meth:`hold_handshakes` holds in their handshake now (their
        ``ClientHello`` received)."""
        with self._lock:
            return self._waiting

    def hold_handshakes(self) -> None:
        """Answer no new client's ``ClientHello`` until :meth:`restore`."""
        self._handshakes.clear()

    def restore(self) -> None:
        self._handshakes.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live, self._live = list(self._live), set()
        self._handshakes.set()
        # shutdown wakes the threads blocked on these sockets; each closes its own.
        for sock in [self._listener, *live]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if not self._closed:
                self._live.add(sock)
            return not self._closed

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            if not self._keep(client):
                return
            try:
                # Counted held once its ClientHello is here: the client is out of OpenSSL
                # then, waiting (a fork while a thread is inside OpenSSL may leave the child
                # one of its locks, held for good).
                client.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            with self._lock:
                self._waiting += 1
            self._handshakes.wait()
            with self._lock:
                self._waiting -= 1
            try:
                tls = self._context.wrap_socket(client, server_side=True)
                server = socket.create_connection(self._target)
            except OSError:  # the client gave up, or the front is closing
                return
            with tls, server:
                if self._keep(tls) and self._keep(server):
                    self._pump(tls, server)
            with self._lock:
                self._live -= {client, tls, server}

    @staticmethod
    def _pump(tls: ssl.SSLSocket, server: socket.socket) -> None:
        """Bytes each way until either side ends (one thread: an SSL object is not read and
        written from two threads at once)."""
        try:
            while True:
                ready = [tls] if tls.pending() else select.select([tls, server], [], [])[0]
                for sock, other in ((tls, server), (server, tls)):
                    if sock in ready:
                        data = sock.recv(_CHUNK)
                        if not data:
                            return
                        other.sendall(data)
        except OSError:  # reset, or the front is closing
            return

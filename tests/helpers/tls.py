"""Certificates for the TLS tests, made with the ``openssl`` command line: a CA, a server
certificate for 127.0.0.1 / localhost signed by it (with the key, as a PEM keystore), a
client certificate, a second CA that signed nothing here, and an expired server
certificate (``openssl ca`` back-dates it: ``openssl x509`` cannot before OpenSSL 3.4);
and a bare TLS server presenting one of them."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust (BDI_KAFKA_SSL_CAFILE)
    keystore: Path  # the server's key + certificate chain (PEM), for Kafka's listener
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these
    expired: Path  # key + certificate of a server whose validity ended, signed by ``ca``
    expired_cert: Path
    expired_key: Path


def _run(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-800:]}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "30", "-subj", f"/CN=BDI test {name}", cwd=folder)  # fmt: skip
    return cert, key


def _request(folder: Path, name: str) -> tuple[Path, Path]:
    """A key (PKCS#8, unencrypted: what Kafka's PEM keystore reads) and a signing request."""
    csr, key = folder / f"{name}.csr", folder / f"{name}.key"
    _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    return csr, key


def _sign(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    csr, key = _request(folder, name)
    cert, ext = folder / f"{name}.crt", folder / f"{name}.ext"
    ext.write_text(extensions + "\n")
    _run("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
         "-out", cert, "-days", "30", "-sha256", "-extfile", ext, cwd=folder)  # fmt: skip
    return cert, key


def _sign_expired(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """Valid from 2020-01-01 to 2020-01-02: ``openssl ca`` takes explicit dates."""
    csr, key = _request(folder, name)
    cert, ext, db = folder / f"{name}.crt", folder / f"{name}.ext", folder / f"{name}-db"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text("1000\n")
    ext.write_text(SERVER_NAMES + "\n")
    config = folder / f"{name}.cnf"
    config.write_text(
        f"[ca]\ndefault_ca = test\n[test]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n"
        f"serial = {db}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n"
        "[any]\ncommonName = supplied\n"
    )
    _run("ca", "-batch", "-notext", "-config", config, "-cert", ca[0], "-keyfile", ca[1],
         "-in", csr, "-out", cert, "-startdate", "20200101000000Z", "-enddate",
         "20200102000000Z", "-extfile", ext, cwd=folder)  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server = _sign(folder, "server", ca, f"{SERVER_NAMES}\nextendedKeyUsage=serverAuth")
    client = _sign(folder, "client", ca, "extendedKeyUsage=clientAuth")
    expired = _sign_expired(folder, "expired", ca)
    keystore, expired_pem = folder / "server-keystore.pem", folder / "expired-keystore.pem"
    keystore.write_text(server[1].read_text() + server[0].read_text() + ca[0].read_text())
    expired_pem.write_text(expired[1].read_text() + expired[0].read_text() + ca[0].read_text())
    return Pki(ca[0], keystore, client[0], client[1], other[0], expired_pem, *expired)


@contextlib.contextmanager
def tls_server(
    cert: Path, key: Path, host: str = "127.0.0.1", client_ca: Path | None = None
) -> Iterator[int]:
    """A TLS server presenting ``cert`` that completes handshakes and closes: enough for a
    client to check the certificate; with ``client_ca``, it requires a client certificate
    signed by that CA. Yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass  # a client that refuses the certificate aborts the handshake

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()

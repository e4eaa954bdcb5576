"""TLS and SASL to the broker: the ``BDI_KAFKA_SECURITY_PROTOCOL`` / ``BDI_KAFKA_SSL_*`` /
``BDI_KAFKA_SASL_*`` settings as aiokafka client arguments, the one place every client the
product makes gets them from, and a failed connection named (untrusted or expired
certificate, refused credentials, a listener that speaks another protocol) instead of
aiokafka's "Unable to bootstrap". See docs/KAFKA.md, Security.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from configs.settings import KAFKA_SASL_FIELDS, KAFKA_TLS_FILES
from consumers.errors import BrokerUnavailableError, ConsumerError, KafkaSecurityError

if TYPE_CHECKING:
    from configs.settings import Settings

# the client arguments that decide how a connection is made and authenticated
CONNECTION_KEYS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
)
PROBE_TIMEOUT_S = 10.0
PROBE_TIMEOUT_MS = int(PROBE_TIMEOUT_S * 1000)
ALERT_WAIT_S = 2.0  # how long a refusal of the client certificate may take to arrive
# OpenSSL's X509_V_ERR_* codes named in the messages
CERT_EXPIRED, CERT_NOT_YET_VALID = 10, 9
NAME_MISMATCH = (62, 63, 64)  # host name, e-mail address, IP address
# what a TLS server answers when it refuses the client's certificate
CLIENT_CERT_REFUSED = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
)


class KafkaOptions(dict[str, Any]):
    """aiokafka keyword arguments whose printed form hides the SASL password."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "sasl_plain_password" else v) for k, v in self.items()}
        return f"KafkaOptions({shown!r})"

    __str__ = __repr__


def security_options(settings: Settings) -> KafkaOptions:
    """The security arguments of every aiokafka client made for the broker at
    ``BDI_KAFKA_BOOTSTRAP`` (consumer, producers, admin): empty for ``PLAINTEXT``."""
    protocol = settings.kafka_security_protocol
    options = KafkaOptions()
    if protocol == "PLAINTEXT":
        return options
    options["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = password(settings)
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker's certificate (against ``BDI_KAFKA_SSL_CAFILE``, else the
    system's CAs) and its host name unless ``BDI_KAFKA_SSL_CHECK_HOSTNAME=0``; presents the
    client certificate when one is set."""
    s = settings
    try:
        context = create_ssl_context(
            cafile=s.kafka_ssl_cafile, certfile=s.kafka_ssl_certfile, keyfile=s.kafka_ssl_keyfile
        )
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(
            f"BDI_{name.upper()}={getattr(s, name)}"
            for name in KAFKA_TLS_FILES
            if getattr(s, name) is not None
        )
        raise ConsumerError(f"TLS: cannot load {files or 'the system CAs'}: {exc}") from None
    context.check_hostname = s.kafka_ssl_check_hostname
    return context


def password(settings: Settings) -> str:
    """The SASL password, from the setting or its file (one trailing line end dropped)."""
    if settings.kafka_sasl_password is not None:
        return settings.kafka_sasl_password.get_secret_value()
    path = settings.kafka_sasl_password_file
    assert path is not None, "checked by the settings"
    try:
        text = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:  # the decode error would quote the bytes
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConsumerError(f"BDI_KAFKA_SASL_PASSWORD_FILE={path}: {why}") from None
    if not text:
        raise ConsumerError(f"BDI_KAFKA_SASL_PASSWORD_FILE={path} is empty")
    return text


def plaintext_overrides() -> dict[str, str]:
    """Settings overrides for a local plaintext broker: every TLS / SASL setting unset."""
    unset = dict.fromkeys((*KAFKA_TLS_FILES, *KAFKA_SASL_FIELDS), "")
    return {"kafka_security_protocol": "PLAINTEXT", **unset}


def connection_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``options`` that decide how a connection is made."""
    return {k: options[k] for k in CONNECTION_KEYS if k in options}


async def connection_error(
    bootstrap: str, options: Mapping[str, Any], cause: BaseException
) -> ConsumerError:
    """Why a client with ``options`` could not start at ``bootstrap``.

    aiokafka logs each bootstrap server's error and raises only "Unable to bootstrap";
    so each server is connected to again, directly, and the first failure is named. The
    message never holds the password (it is masked should the broker echo it)."""
    conn = connection_options(options)
    secret = conn.get("sasl_plain_password")
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not port.isdigit():
            continue
        probe = create_conn(host, int(port), request_timeout_ms=PROBE_TIMEOUT_MS, **conn)
        try:
            found = await asyncio.wait_for(probe, PROBE_TIMEOUT_S)
        except Exception as exc:  # named below; anything unknown keeps aiokafka's words
            error = await _name(host, int(port), conn, exc)
            if secret:
                error.args = (str(error).replace(secret, "***"),)
            return error
        found.close()
    return BrokerUnavailableError(f"cannot reach Kafka at {bootstrap}: {cause}")


async def _name(host: str, port: int, conn: Mapping[str, Any], exc: Exception) -> ConsumerError:
    where = f"{host}:{port}"
    protocol = conn.get("security_protocol", "PLAINTEXT")
    given = f"BDI_KAFKA_SECURITY_PROTOCOL={protocol}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return KafkaSecurityError(_untrusted(where, host, exc))
    if isinstance(exc, ssl.SSLError) and any(r in str(exc).upper() for r in CLIENT_CERT_REFUSED):
        return KafkaSecurityError(_refused_certificate(where, str(exc.reason or exc)))
    if isinstance(exc, SaslAuthenticationFailed):
        user, mechanism = conn.get("sasl_plain_username"), conn.get("sasl_mechanism")
        return KafkaSecurityError(
            f"Kafka at {where} refused the SASL credentials of user {user} ({mechanism}): {exc}"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        enabled = f" ({exc})" if "Enabled mechanisms" in str(exc) else ""
        return KafkaSecurityError(
            f"SASL: Kafka at {where} does not offer {conn.get('sasl_mechanism')} on this "
            f"listener{enabled}; set a BDI_KAFKA_SASL_MECHANISM it enables"
        )
    if isinstance(exc, IllegalSaslStateError):
        return KafkaSecurityError(f"SASL: Kafka at {where} ({given}): {exc}")
    if _unreachable(exc):
        return BrokerUnavailableError(f"cannot reach Kafka at {where}: {exc}")
    # the connection was taken, then closed or left unanswered: another protocol?
    tls = protocol in ("SSL", "SASL_SSL")
    listener_tls = await _speaks_tls(host, port)
    if tls and not listener_tls:
        return KafkaSecurityError(
            f"TLS: Kafka at {where} does not speak TLS (a PLAINTEXT or SASL_PLAINTEXT "
            f"listener?), but {given}"
        )
    if listener_tls and not tls:
        return KafkaSecurityError(
            f"Kafka at {where} is a TLS listener, but {given}: set SSL or SASL_SSL "
            "(and BDI_KAFKA_SSL_CAFILE)"
        )
    alert = await _tls_alert(host, port, conn["ssl_context"]) if tls else None
    if alert is not None:
        return KafkaSecurityError(_refused_certificate(where, alert))
    kind, text = type(exc).__name__, str(exc)
    detail = text if text.startswith(kind) else f"{kind}: {text}" if text else kind
    hint = " (does the listener need SASL?)" if protocol in ("PLAINTEXT", "SSL") else ""
    return BrokerUnavailableError(
        f"Kafka at {where} closed the connection or did not answer ({detail}); {given}{hint}"
    )


def _refused_certificate(where: str, alert: str) -> str:
    """The broker refused the client certificate given, or the lack of one."""
    return (
        f"TLS: Kafka at {where} refused the client certificate, or wants one "
        f"(BDI_KAFKA_SSL_CERTFILE, BDI_KAFKA_SSL_KEYFILE): {alert}"
    )


def _unreachable(exc: Exception) -> bool:
    """Nothing listens there, or the host cannot be found or reached."""
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, ConnectionError | ssl.SSLError)


def _untrusted(where: str, host: str, exc: ssl.SSLCertVerificationError) -> str:
    why = f"certificate verify failed: {exc.verify_message}"
    if exc.verify_code == CERT_EXPIRED:
        return f"TLS: the broker's certificate at {where} has expired ({why})"
    if exc.verify_code == CERT_NOT_YET_VALID:
        return f"TLS: the broker's certificate at {where} is not valid yet ({why})"
    if exc.verify_code in NAME_MISMATCH:
        return (
            f"TLS: the broker's certificate at {where} does not name {host} ({why}); use the "
            "name its certificate gives, or BDI_KAFKA_SSL_CHECK_HOSTNAME=0"
        )
    # BDI_KAFKA_SSL_CAFILE unset: the system's CAs (docs/KAFKA.md)
    trust = "not trusted by BDI_KAFKA_SSL_CAFILE"
    return f"TLS: the broker's certificate at {where} is {trust} ({why})"


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` answers a TLS handshake (nothing verified, nothing sent): it
    completes, or the server refuses it with a TLS alert."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), PROBE_TIMEOUT_S
        )
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason).upper()
    except (OSError, TimeoutError):
        return False
    await _close(writer)
    return True


async def _tls_alert(host: str, port: int, context: ssl.SSLContext) -> str | None:
    """The TLS alert a server sends once the handshake is done (TLS 1.3 checks the client's
    certificate only then): ``TLSV13_ALERT_CERTIFICATE_REQUIRED``, ... None: none came."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), PROBE_TIMEOUT_S
        )
    except ssl.SSLError as exc:
        return str(exc.reason) if "ALERT" in str(exc.reason).upper() else None
    except (OSError, TimeoutError):
        return None
    try:
        await asyncio.wait_for(reader.read(1), ALERT_WAIT_S)  # a Kafka broker says nothing first
    except ssl.SSLError as exc:
        return str(exc.reason) if "ALERT" in str(exc.reason).upper() else None
    except (OSError, TimeoutError):
        return None
    finally:
        await _close(writer)
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()

"""The consistency of the Kafka TLS / SASL settings (docs/KAFKA.md, "Security"), checked
when the settings are loaded."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from configs.settings import KAFKA_SASL_FIELDS, KAFKA_TLS_FILES, env_names

if TYPE_CHECKING:
    from configs.settings import Settings


def kafka_security_problems(s: Settings) -> list[str]:
    """What is inconsistent in the Kafka TLS / SASL settings (empty: nothing). A TLS or
    SASL setting the protocol would not use is refused rather than ignored: a client meant
    to be secured never talks in plain text by mistake."""
    protocol = s.kafka_security_protocol
    given = f"BDI_KAFKA_SECURITY_PROTOCOL={protocol}"
    problems: list[str] = []
    tls = [env_names(f) for f in KAFKA_TLS_FILES if getattr(s, f) is not None]
    if tls and protocol not in ("SSL", "SASL_SSL"):
        problems.append(f"{', '.join(tls)} set, but {given} does not use TLS (SSL or SASL_SSL)")
    sasl = [env_names(f) for f in KAFKA_SASL_FIELDS if getattr(s, f) is not None]
    if sasl and not protocol.startswith("SASL_"):
        problems.append(
            f"{', '.join(sasl)} set, but {given} does not use SASL (SASL_PLAINTEXT or SASL_SSL)"
        )
    if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
        problems.append(
            "BDI_KAFKA_SSL_CERTFILE and BDI_KAFKA_SSL_KEYFILE go together (the client "
            "certificate and its private key)"
        )
    for name in (*KAFKA_TLS_FILES, "kafka_sasl_password_file"):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            problems.append(f"{env_names(name)}={path}: no such file")
        elif path is not None and not os.access(path, os.R_OK):
            problems.append(f"{env_names(name)}={path}: not readable")
    if protocol.startswith("SASL_"):
        missing = []
        if s.kafka_sasl_mechanism is None:
            missing.append("BDI_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        if not s.kafka_sasl_username:
            missing.append("BDI_KAFKA_SASL_USERNAME")
        if s.kafka_sasl_password is None and s.kafka_sasl_password_file is None:
            missing.append("BDI_KAFKA_SASL_PASSWORD (or BDI_KAFKA_SASL_PASSWORD_FILE)")
        if missing:
            problems.append(f"{given} needs {', '.join(missing)}")
        if s.kafka_sasl_password is not None and s.kafka_sasl_password_file is not None:
            problems.append(
                "BDI_KAFKA_SASL_PASSWORD and BDI_KAFKA_SASL_PASSWORD_FILE are both set: keep one"
            )
    return problems

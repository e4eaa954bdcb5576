"""A SASL_SSL client listener for :class:`consumers.apache_kafka.KafkaCluster`, beside its
PLAINTEXT one (which inter-broker traffic, the controllers and readiness keep using): TLS
with a PEM keystore, client certificates checked when presented, SASL PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512. It is how the tests run a broker secured as plants run
theirs; see docs/KAFKA.md, Security.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from consumers.broker import free_port

NAME = "SASL_SSL"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"
# what survives a properties file, a JAAS string and StorageTool's --add-scram unquoted
SAFE = re.compile(r"[A-Za-z0-9._~!@#$%^&*+=:/?-]+")


@dataclass
class SecureListener:
    """``keystore``: PEM holding the server's private key (PKCS#8) and certificate chain;
    ``users``: ``{name: password}``, accepted by every mechanism (SCRAM credentials are
    written when the storage is formatted); ``truststore``: PEM CA certificates that a
    client certificate, when one is presented, must chain to (none: not asked for)."""

    keystore: Path
    users: Mapping[str, str]
    truststore: Path | None = None
    host: str = "127.0.0.1"
    ports: dict[int, int] = field(default_factory=dict)  # node id -> its SASL_SSL port

    def __post_init__(self) -> None:
        for text in (*self.users, *self.users.values()):
            if not SAFE.fullmatch(text):
                raise ValueError(f"SASL user names and passwords here must match {SAFE.pattern}")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{port}" for port in self.ports.values())

    def server_properties(self, props: Mapping[str, str], node_id: int) -> dict[str, str]:
        """What a node's ``props`` (PLAINTEXT and CONTROLLER listeners) gain."""
        if node_id not in self.ports:  # a free port none of the node's listeners took
            taken = {int(p) for p in re.findall(r":(\d+)", props["listeners"])}
            taken |= set(self.ports.values())
            while (port := free_port(self.host)) in taken:
                pass
            self.ports[node_id] = port
        port = self.ports[node_id]
        prefix = f"listener.name.{NAME.lower()}."
        plain_users = " ".join(f'user_{name}="{pw}"' for name, pw in self.users.items())
        out = {
            "listeners": f"{props['listeners']},{NAME}://{self.host}:{port}",
            "advertised.listeners": f"{props['advertised.listeners']},{NAME}://{self.host}:{port}",
            "listener.security.protocol.map": f"{props['listener.security.protocol.map']},"
            f"{NAME}:{NAME}",
            f"{prefix}sasl.enabled.mechanisms": ",".join(MECHANISMS),
            f"{prefix}plain.sasl.jaas.config": f"{PLAIN_LOGIN} required {plain_users};",
            f"{prefix}scram-sha-256.sasl.jaas.config": f"{SCRAM_LOGIN} required;",
            f"{prefix}scram-sha-512.sasl.jaas.config": f"{SCRAM_LOGIN} required;",
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.location": str(self.keystore),
        }
        if self.truststore is not None:
            out[f"{prefix}ssl.truststore.type"] = "PEM"
            out[f"{prefix}ssl.truststore.location"] = str(self.truststore)
            out[f"{prefix}ssl.client.auth"] = "requested"
        return out

    def format_args(self) -> list[str]:
        """``kafka.tools.StorageTool format`` arguments writing the SCRAM credentials."""
        return [
            f"--add-scram={mechanism}=[name={name},password={pw}]"
            for mechanism in MECHANISMS[1:]
            for name, pw in self.users.items()
        ]


def secured_properties(
    listener: SecureListener | None, props: Mapping[str, str], node_id: int
) -> dict[str, str]:
    """``listener``'s additions to a node's properties (none without one)."""
    return {} if listener is None else listener.server_properties(props, node_id)


def scram_args(listener: SecureListener | None) -> list[str]:
    return [] if listener is None else listener.format_args()

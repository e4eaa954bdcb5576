"""Loaders for the deployment files: compose (with its variable interpolation), Kubernetes
manifests, the Dockerfile's instructions, and what the app and the command line accept."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from configs.settings import LEGACY_ALIASES, Settings
from tests.helpers.paths import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
IMAGE = "bdi-edge"  # the image the api and consumers run

SETTING_NAMES = frozenset(
    {f"BDI_{name.upper()}" for name in Settings.model_fields} | set(LEGACY_ALIASES.values())
)
OWN_PREFIXES = ("BDI_", "BRAKEDISC_")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
REQUIRED = "<required>"


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's variable interpolation over a parsed document, with ``env`` as the
    environment (unset variables take their defaults; required ones become ``REQUIRED``)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return REQUIRED
        return ""

    parts = value.split("$$")  # an escaped dollar is never a variable
    return "$".join(_VARIABLE.sub(one, p) for p in parts)


def variables(text: str) -> dict[str, tuple[str | None, str | None]]:
    """Every ``${NAME...}`` in a text: name -> (operator, argument)."""
    return {m["name"]: (m["op"], m["arg"]) for m in _VARIABLE.finditer(text)}


def load_compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def is_bdi_image(image: str | None) -> bool:
    return bool(image) and str(image).rsplit("/", 1)[-1].split(":")[0] == IMAGE


def bdi_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if is_bdi_image(s.get("image"))}


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in k8s_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d.get("kind") == kind]


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, container) for every container of every Deployment."""
    for dep in k8s_kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            yield dep, c


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of deploy/Dockerfile, continuations joined, comments out."""
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines()
             if not ln.lstrip().startswith("#")]  # fmt: skip
    out: list[tuple[str, str]] = []
    buffer = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        full = (buffer + line).strip()
        buffer = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word != "ENV":
            continue
        tokens = shlex.split(rest)
        if tokens and "=" not in tokens[0]:  # the legacy `ENV NAME value` form
            env[tokens[0]] = " ".join(tokens[1:])
        else:
            env.update(t.split("=", 1) for t in tokens)  # type: ignore[misc]
    return env


def bdi_parser() -> argparse.ArgumentParser:
    from edge.cli import build_parser

    return build_parser()


def parse_bdi(argv: list[str]) -> argparse.Namespace:
    """``bdi argv`` as the real command line parses it (SystemExit: not a bdi command)."""
    return bdi_parser().parse_args(argv)

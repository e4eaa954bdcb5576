"""docs/DEPLOY.md only shows commands the files support: every `bdi ...` parses with the real
command line, every compose service it names exists, every file it names is there."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers.deploy import DEPLOY, load_compose, parse_bdi
from tests.helpers.paths import REPO

DOC = REPO / "docs" / "DEPLOY.md"
SEPARATORS = {"&&", "||", "|", ";"}


def _shell_lines() -> list[str]:
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.split(" #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _commands() -> list[list[str]]:
    """Every simple command in the shell blocks (ssh's quoted remote command included)."""
    out: list[list[str]] = []
    for line in _shell_lines():
        pending = [line]
        while pending:
            tokens = shlex.split(pending.pop())
            current: list[str] = []
            for token in [*tokens, ";"]:
                if token in SEPARATORS:
                    if current:
                        out.append(current)
                    current = []
                elif " " in token and current and current[0] == "ssh":
                    pending.append(token)  # the remote command
                else:
                    current.append(token)
    return out


def _bdi_invocations() -> list[list[str]]:
    found = []
    for argv in _commands():
        for i, token in enumerate(argv):
            # the command itself, or what `compose exec SERVICE` / `kubectl exec ... --` runs
            runs = i == 0 or argv[i - 1] == "--" or (i >= 2 and argv[i - 2] == "exec")
            if runs and (token == "bdi" or token.endswith("/bdi")):
                found.append(argv[i + 1 :])
                break
    return found


def test_the_page_shows_bdi_commands() -> None:
    used = {argv[0] for argv in _bdi_invocations()}
    assert {"export-model", "import-model", "train", "models"} <= used


@pytest.mark.parametrize("argv", _bdi_invocations(), ids=lambda a: " ".join(a)[:60])
def test_bdi_commands_parse(argv: list[str]) -> None:
    try:
        parse_bdi(argv)
    except SystemExit:
        pytest.fail(f"`bdi {' '.join(argv)}` is not accepted by the command line")


def test_compose_commands_name_real_services_and_files() -> None:
    compose = load_compose()
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    checked = 0
    for argv in _commands():
        if argv[:2] != ["docker", "compose"]:
            continue
        checked += 1
        assert argv[2:4] == ["-f", "deploy/compose.yaml"], argv
        words, options, rest = [], {}, argv[4:]
        while rest:
            token = rest.pop(0)
            if token in ("--scale", "--profile"):
                options[token] = rest.pop(0)
            elif not token.startswith("-"):
                words.append(token)
        if "--scale" in options:
            assert options["--scale"].split("=")[0] in services, argv
        if "--profile" in options:
            assert options["--profile"] in profiles, argv
        if words[0] in ("exec", "logs"):
            assert words[1] in services, argv
        if words[0] == "cp":
            named = {w.split(":")[0] for w in words[1:] if ":" in w}
            assert named and named <= services, argv
        if words[0] == "up":
            assert set(words[1:]) <= services, argv
    assert checked >= 5


def test_files_the_page_names_exist() -> None:
    text = DOC.read_text()
    for name in set(re.findall(r"`((?:deploy|docs)/[A-Za-z0-9_./-]+)`", text)):
        path = REPO / name
        user_made = name in ("deploy/.env", "deploy/weights/")  # ignored by deploy/.gitignore
        assert path.exists() or user_made, f"DEPLOY.md names {name}, which is missing"
    assert (DEPLOY / "env.example").is_file()


def test_env_example_names_compose_variables() -> None:
    """Every variable env.example sets is one the compose file reads."""
    from tests.helpers.deploy import variables

    read = set(variables((DEPLOY / "compose.yaml").read_text()))
    lines = (DEPLOY / "env.example").read_text().splitlines()
    names = {ln.lstrip("# ").split("=", 1)[0] for ln in lines if re.match(r"#? ?[A-Z_]+=", ln)}
    assert names and names <= read, names - read

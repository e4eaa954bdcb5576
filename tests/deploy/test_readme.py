"""README.md's shell examples, run on a CPU machine as a newcomer runs them: the quick start
(`make run`, then `make demo` beside it, each stopped with Ctrl-C), the REST API walkthrough
against a real `bdi serve`, training from the command line.

The commands run as written, from the repository root. Only where they would touch the
checkout or a fixed port does the test differ: the local settings file, the model store and
the API port come in through the environment (`BDI_ENV_FILE`, `BDI_MODELS_DIR`,
`BDI_BACKEND_PORT`), and the walkthrough's folder and address (`/tmp/bdi-demo`,
`http://127.0.0.1:8000`) are replaced by a temporary folder and that port. Not run:
`make test` (this suite) and `bdi bench engine` (minutes; its arguments are parsed)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import free_port
from tests.helpers.deploy import parse_bdi
from tests.helpers.paths import REPO
from tests.helpers.settings import tiny_settings
from tests.helpers.shell import Background, Shell, bash_blocks, commands

README = REPO / "README.md"
SECTIONS = ("Quick start", "REST API", "Training from the command line")
NOT_RUN = ("make test", ".venv/bin/bdi bench engine")
# the placeholder REVISION, filled in as a person would: from the listing above it
OLDEST = (
    'curl -s "$BDI/models/revisions?recipe_id=disc-a&role_id=master&roi_id=inner-ring"'
    " | jq -r '.revisions[-1].revision'"
)


def _all_commands() -> list[str]:
    return [c for s in SECTIONS for b in bash_blocks(README, s) for c in commands(b)]


def _open_paths() -> set[str]:
    """The paths the README says stay open when BDI_API_KEY is set."""
    text = README.read_text()
    (sentence,) = re.findall(r"With `BDI_API_KEY` set, every endpoint but (.*?) wants", text, re.S)
    return set(re.findall(r"`(/[a-z_./]*)`", sentence))


# --- fast: what the README names exists -----------------------------------------------------
def test_every_bdi_command_in_the_readme_parses() -> None:
    found = [c.split()[1:] for c in _all_commands() if c.split()[0].endswith("bin/bdi")]
    assert len(found) >= 6
    for argv in found:
        parse_bdi(argv)  # SystemExit (a failed test) if the command line refuses it


def test_the_readme_lists_every_path_open_without_the_api_key(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edge.api.app import create_app

    app = create_app(tiny_settings(models_dir=tmp_path, api_key="k"), warmup=False)
    paths = {(p, m) for p, ops in app.openapi()["paths"].items() for m in ops}
    paths |= {("/docs", "get"), ("/redoc", "get"), ("/openapi.json", "get")}
    with TestClient(app) as client:
        open_ = {p for p, m in paths if client.request(m, p).status_code != 401}
    assert open_ == _open_paths()


# --- slow: the commands themselves ----------------------------------------------------------
@pytest.fixture(scope="module")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a newcomer's terminal after `make install`: its bdi.env (here in a
    temporary folder) chooses the dev profile on a machine without CUDA."""
    root = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env["BDI_ENV_FILE"] = str(root / "bdi.env")
    env["BDI_MODELS_DIR"] = str(root / "models")
    done = subprocess.run(
        ["make", "--no-print-directory", "install"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "bdi.env").is_file()
    return env


def _with_port(env: dict[str, str]) -> tuple[dict[str, str], int]:
    port = free_port()
    return {**env, "BDI_BACKEND_PORT": str(port)}, port


@pytest.mark.slow
def test_quick_start_make_run_then_make_demo(local_env: dict[str, str]) -> None:
    (block,) = bash_blocks(README, "Quick start")
    assert commands(block) == ["make run", "make test"]
    env, port = _with_port(local_env)
    up = Background("make run", REPO, env)
    try:
        shown = up.output.until("processes :", 300)
        # the banner the README shows, line for line by label
        (banner,) = re.findall(r"```\n(BDI Edge is up\n.*?)```", README.read_text(), re.S)
        labels = [ln.split(":")[0].strip() for ln in banner.splitlines() if " : " in ln]
        printed = [ln.split(":")[0].strip() for ln in shown.splitlines() if " : " in ln]
        assert labels == printed[-len(labels) :], shown
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200

        demo = Background("make demo", REPO, env)
        try:
            demo.output.until("calibrated with", 300)
            demo.output.until("ms", 60)  # a few verdicts came back
        finally:
            out = demo.interrupt()
        assert re.search(r"demo: \d+ frames, [1-9]\d* verdicts \(.*ERROR 0.*\).* wrong 0", out), out
    finally:
        out = up.interrupt(120)
    assert "bdi up: stopping" in out and "Traceback" not in out, out


def _is_server(block: str) -> bool:
    cmds = commands(block)
    return len(cmds) == 1 and cmds[0].endswith("bin/bdi serve")


@pytest.mark.slow
def test_rest_api_walkthrough(local_env: dict[str, str], tmp_path: Path) -> None:
    env, port = _with_port(local_env)
    url = f"http://127.0.0.1:{port}"
    blocks = bash_blocks(README, "REST API")
    assert sum(map(_is_server, blocks)) == 2 and _is_server(blocks[0])
    shell = Shell(REPO, env)
    server: Background | None = None
    outputs: list[str] = []
    try:
        for block in blocks:
            if _is_server(block):
                if server is not None:
                    server.interrupt()
                server = Background(commands(block)[0], REPO, env)
                server.output.until("BDI Edge API on", 120)
                _wait_ready(url, server)
                continue
            typed = block.replace("/tmp/bdi-demo", str(tmp_path / "bdi-demo"))
            typed = typed.replace("http://127.0.0.1:8000", url)
            typed = typed.replace("revision=REVISION", f"revision=$({OLDEST})")
            outputs.append(shell.run(typed, 300))
    finally:
        shell.close()
        if server is not None:
            server.interrupt()
    text = "\n".join(outputs)
    assert "Traceback" not in text
    meant = ("missing_memory", "unauthorized")  # the two examples of errors
    for out in outputs:
        assert not re.search(r'"error":\s*"', out) or any(m in out for m in meant), out
    fit, *_ = (o for o in outputs if '"model_version"' in o)
    assert '"n_images": 8' in fit
    (errors,) = (o for o in outputs if "missing_memory" in o)
    assert '"request_id":"cam2-000123"' in errors and errors.rstrip().endswith("400")
    assert outputs[-1].splitlines()[-1] == '"unauthorized"'
    assert (tmp_path / "bdi-demo" / "heat.png").stat().st_size > 0


def _wait_ready(url: str, server: Background, timeout_s: float = 120) -> None:
    """A person reads the banner, then types; the test waits for the backbone instead."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.output.text
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ready never answered 200:\n{server.output.text}")


@pytest.mark.slow
def test_training_from_the_command_line(local_env: dict[str, str]) -> None:
    (block,) = bash_blocks(README, "Training from the command line")
    (data,) = re.findall(r"^DATA=(\S+)$", block, re.M)
    if not (REPO / data).is_dir():
        pytest.skip(f"the shared photographs are not at {REPO / data}")
    typed = "\n".join(c for c in commands(block) if not c.startswith(NOT_RUN))
    # the placeholder a person fills in from the listing above it: the oldest revision
    listed = ".venv/bin/bdi models --revisions --recipe plate --role master --roi full --json"
    typed = typed.replace("REVISION", f"$({listed} | jq -r '.[0].revisions[-1].revision')")
    shell = Shell(REPO, local_env)
    try:
        out = shell.run(typed, 900)
    finally:
        shell.close()
    assert "plate" in out and "Traceback" not in out, out
    assert any(Path(local_env["BDI_MODELS_DIR"]).rglob("*")), "nothing was stored"

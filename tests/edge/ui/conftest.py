"""A running line for the browser tests: ``bdi up`` (embedded broker, API, one consumer,
the trace store) with two named users, ``bdi demo`` streaming discs through it, and Debian's
Chromium driven by Playwright. The tests skip, naming what is missing, without them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.helpers.api import free_port
from tests.helpers.paths import REPO
from tests.helpers.terminal import BdiProcess, bdi_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PASSWORDS = {"eng": "eng-password-1", "op": "op-password-1"}
ROLES = {"eng": "engineer", "op": "operator"}
API_KEY = "demo-machine-key"  # the demo camera trains as a machine (BDI_API_KEY_ROLE=engineer)
# screenshots land in docs/ui/ only when asked for (`make screenshots`): a test run leaves
# the working tree as it found it
SHOTS = Path(os.environ.get("BDI_UI_SCREENSHOTS") or Path(tempfile.gettempdir()) / "bdi-ui")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return os.environ.get("BDI_TEST_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (its own browser download is not used). Per module:
    Playwright's sync API holds an event loop on this thread while it runs, which would stop
    later tests from starting their own."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium (make install puts Debian's chromium there)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright (pip install -e '.[dev]')")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Line:
    url: str
    bootstrap: str
    models_dir: Path
    env: dict[str, str]
    up: BdiProcess
    demo: BdiProcess
    errors: list[str] = field(default_factory=list)  # page errors seen by any test

    @contextlib.contextmanager
    def api(self, user: str | None = None) -> Iterator[httpx.Client]:
        """A REST client: logged in as ``user`` (cookie + CSRF), or the machines' key."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            if user is None:
                client.headers["X-API-Key"] = API_KEY
            else:
                body = {"username": user, "password": PASSWORDS[user]}
                r = client.post("/auth/login", json=body)
                assert r.status_code == 200, r.text
                client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            yield client

    def page(self, browser: Browser, user: str, hash_: str = "#/line") -> Page:
        """A fresh browser context logged in as ``user`` through the login form."""
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"{user}: {e}"))
        page.goto(f"{self.url}/ui{hash_}")
        page.wait_for_url("**/ui/login**")
        page.fill("[data-testid=login-user]", user)
        page.fill("[data-testid=login-password]", PASSWORDS[user])
        page.click("[data-testid=login-submit]")
        page.wait_for_url(f"**/ui{hash_}")
        page.wait_for_selector("[data-testid=who-user]")
        return page


def shot(page: Page, name: str, **kwargs: Any) -> None:
    """A screenshot of the page (for docs/ui/, which the README shows, with `make screenshots`)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), **kwargs)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    if chromium_path() is None:
        pytest.skip("no chromium (make install puts Debian's chromium there)")
    models = tmp_path_factory.mktemp("ui") / "models"
    port = free_port()
    env = bdi_env(
        models, BDI_IMAGE_SIZE=96, BDI_API_KEY=API_KEY, BDI_API_KEY_ROLE="engineer",
        BDI_MIN_OK_SAMPLES=8, BDI_BACKEND_PORT=port,
    )  # fmt: skip
    for name, password in PASSWORDS.items():
        done = subprocess.run(
            [sys.executable, "-m", "edge.cli", "users", "add", name, "--role", ROLES[name],
             "--password-stdin"], input=password + "\n", env=env, capture_output=True,
            text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    with BdiProcess(
        ["up", "--port", str(port), "--broker-port", "0", "--consumers", "1",
         "--partitions", "2"], env,
    ) as up:  # fmt: skip
        up.wait_for(r"BDI Edge is up")
        bootstrap = up.wait_for(r"Kafka\s+: (\S+)").group(1)
        demo_env = {**env, "BDI_KAFKA_BOOTSTRAP": bootstrap}
        with BdiProcess(
            ["demo", "--fps", "4", "--size", "96", "--train", "16", "--ng-rate", "0.3",
             "--no-live", "--port", str(port)], demo_env,
        ) as demo:  # fmt: skip
            demo.wait_for(r"sent \d+  verdicts \{'(OK|NG)': [1-9]", 300)
            yield Line(f"http://127.0.0.1:{port}", bootstrap, models, env, up, demo)
            demo.ctrl_c()
            demo.wait(60)
        up.ctrl_c()
        up.wait(90)

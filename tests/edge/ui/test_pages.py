"""``/ui``: the shell, the login page and the assets are served, from the package, with a
strict Content-Security-Policy; nothing on them comes from another origin."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from edge.ui.pages import STATIC


def test_root_leads_to_the_screen(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/ui"


def test_shell_and_login_pages_are_served_with_a_strict_policy(client: TestClient) -> None:
    for path, marker in (("/ui", 'id="page"'), ("/ui/login", 'data-testid="login-form"')):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert marker in response.text
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_assets_are_served_and_a_missing_one_is_404(client: TestClient) -> None:
    js = client.get("/ui/static/js/app.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert "content-security-policy" in js.headers
    assert client.get("/ui/static/css/app.css").status_code == 200
    assert client.get("/ui/static/js/nope.js").status_code == 404
    assert client.get("/ui/static/../pages.py").status_code == 404


def test_no_asset_comes_from_another_origin() -> None:
    """The line may have no internet: no CDN, no remote font, no remote script."""
    remote = re.compile(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//"""
        r"""|@import\s+url\(\s*["']?https?:|\bimport\s[^;]*?from\s*["']https?:"""
    )
    files = [p for p in Path(STATIC).rglob("*") if p.suffix in {".html", ".js", ".css"}]
    assert len(files) >= 5
    for path in files:
        assert not remote.search(path.read_text()), path


def test_every_asset_is_package_data() -> None:
    """A wheel ships what the pages load: each asset's folder is named in pyproject.toml."""
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    globs = re.search(r'"edge\.ui" = \[(.*?)\]', pyproject)
    assert globs, "edge.ui package data missing from pyproject.toml"
    patterns = re.findall(r'"([^"]+)"', globs.group(1))
    for path in Path(STATIC).rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC.parent)
            assert any(rel.match(p) for p in patterns), rel

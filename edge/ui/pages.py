"""``/ui``: the app shell, the login page and the static assets (docs/UI.md).

The pages are public files; everything they show comes from the REST API, which checks the
session cookie and the role of every call. A strict Content-Security-Policy (scripts, styles
and connections from this origin only, no framing) keeps a stored value from ever running as
script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> Response:
    return FileResponse(STATIC / name, media_type="text/html", headers=_HEADERS)


@router.get("/")
async def root() -> Response:
    """The API's root leads people to the screen (machines use the documented paths)."""
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def shell() -> Response:
    """The app shell: it asks ``/auth/me`` who is there and sends strangers to the login."""
    return _page("index.html")


@router.get("/ui/login")
async def login_page() -> Response:
    return _page("login.html")


class _Static(StaticFiles):
    """The assets, with the same headers as the pages (no-cache: an upgrade shows at once)."""

    async def get_response(self, path: str, scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the screen from ``app``."""
    app.include_router(router)
    app.mount("/ui/static", _Static(directory=STATIC), name="ui-static")

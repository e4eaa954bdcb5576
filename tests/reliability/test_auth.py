"""S13: with ``BDI_API_KEY`` set, every endpoint except the open ones answers 401 without the
key (missing, wrong, or sent anywhere but ``X-API-Key``), before looking at its fields; and
a CORS preflight from a foreign origin gets no allow header. The endpoints are enumerated
from the app itself (OpenAPI schema *and* routing table), so a new one cannot escape."""

from __future__ import annotations

from collections import Counter

import httpx

from tests.helpers.api_requests import VALID, Operation, operations, send
from tests.helpers.images import ok_png

KEY = "k3y-for-the-reliability-suite"
OPEN = {"/health", "/ready", "/metrics"}  # probes and metrics (docs/API_CONTRACTS.md)
# logging in and out take no key: a login checks a password (docs/AUTH.md)
OPEN |= {"/auth/login", "/auth/logout"}
DOCS = {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}  # schema pages
ALLOWED_ORIGIN = "https://hmi.plant.example"
FOREIGN = "https://evil.example"
WRONG_PLACES = [
    {},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEY[:-1]},
    {"X-API-Key": KEY.upper()},
    {"Authorization": f"Bearer {KEY}"},
    {"X-Api-Token": KEY},
]


def every_route(app, spec) -> list[Operation]:
    """The schema's operations plus any route the schema does not show."""
    ops = operations(spec)
    known = {(op.method, op.path) for op in ops}
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if (method, route.path) not in known and route.path not in DOCS:
                ops.append(Operation(method, route.path, (), None, (), ()))
    return ops


def test_every_endpoint_needs_the_key_and_foreign_origins_get_no_cors(live_server, report):
    server = live_server(api_key=KEY, cors_origins=ALLOWED_ORIGIN)
    open_server = live_server()  # CORS off: nothing allowed at all
    spec = server.app.openapi()
    ops = every_route(server.app, spec)
    escapes: list[tuple[str, dict, int]] = []
    statuses: Counter[str] = Counter()
    cors_leaks: list[tuple[str, str]] = []
    requests = 0
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for op in ops:
            protected = op.path not in OPEN
            for headers in WRONG_PLACES:
                values = {**VALID, "name": "x.png"}
                query_key = {"api_key": KEY, "X-API-Key": KEY} if not headers else {}
                r = send(http, op, {**values, **query_key}, image=ok_png(1), headers=headers)
                requests += 1
                statuses[f"{r.status_code}"] += 1
                if protected and r.status_code != 401:
                    escapes.append((op.label, headers, r.status_code))
                if protected and r.status_code == 401 and r.json().get("error") != "unauthorized":
                    escapes.append((op.label, headers, -1))
            if op.method == "GET" and protected:
                r = http.head(op.path)
                requests += 1
                if 200 <= r.status_code < 300:
                    escapes.append((f"HEAD {op.path}", {}, r.status_code))
            r = send(http, op, {**VALID, "name": "x.png"}, image=ok_png(1),
                     headers={"X-API-Key": KEY})  # fmt: skip
            requests += 1
            if r.status_code == 401:
                escapes.append((op.label, {"X-API-Key": "<the key>"}, -401))
        for path in sorted({op.path for op in ops} | DOCS):
            for base in (server.url, open_server.url):
                preflight = httpx.options(f"{base}{path}", headers={
                    "Origin": FOREIGN, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "X-API-Key"})  # fmt: skip
                simple = httpx.get(f"{base}{path}", headers={"Origin": FOREIGN})
                requests += 2
                for answer in (preflight, simple):
                    allow = answer.headers.get("access-control-allow-origin")
                    if allow is not None:
                        cors_leaks.append((path, allow))
        control = httpx.options(f"{server.url}/infer", headers={
            "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"})  # fmt: skip
    report(
        "S13", holds=not (escapes or cors_leaks), endpoints=len(ops),
        protected=sum(1 for op in ops if op.path not in OPEN), open=sorted(OPEN),
        requests=requests, unauthenticated_escapes=len(escapes), cors_leaks=len(cors_leaks),
        statuses=dict(statuses),
    )  # fmt: skip
    assert len(ops) >= 16
    assert not escapes, escapes[:10]
    assert not cors_leaks, cors_leaks[:10]
    assert control.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN

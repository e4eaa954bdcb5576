"""Every operation of the app's OpenAPI schema as a request the test can send: valid by
default, with any field replaced. New endpoints are picked up from the schema, so the
security scenarios (path traversal, authentication) cannot miss one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

PATH_LIKE = ("recipe_id", "role_id", "roi_id", "model_key", "label", "name")
VALID: dict[str, Any] = {
    "recipe_id": "disc-a",
    "role_id": "Master1",
    "roi_id": "inspection-1",
    "label": "ok",
    "mm_per_px": "0.1",
    "use_dataset": "false",
    "heatmap": "false",
    "with_meta": "false",
    "ok_scores": [1.0, 2.0, 3.0],
    "ng_scores": [30.0],
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: tuple[str, ...]
    body_type: str | None  # multipart/form-data, application/json, ...-urlencoded
    fields: tuple[str, ...]
    files: tuple[str, ...]  # upload fields among ``fields``

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def names(self) -> tuple[str, ...]:
        return self.query + self.fields


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def operations(spec: dict[str, Any]) -> list[Operation]:
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            query = tuple(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
            body_type, fields, upload = None, (), ()
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                props = _resolve(spec, content["schema"]).get("properties", {})
                body_type, fields = media, tuple(props)
                upload = tuple(
                    n for n, p in props.items() if "binary" in json.dumps(p)
                    or "contentMediaType" in json.dumps(p)
                )  # fmt: skip
            out.append(Operation(method.upper(), path, query, body_type, fields, upload))
    return out


def send(
    http: httpx.Client,
    op: Operation,
    values: dict[str, Any],
    *,
    image: bytes,
    filename: str = "image.png",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``op`` with ``values`` (``None``: field left out); files carry ``image``."""
    chosen = {n: values[n] for n in op.names if values.get(n) is not None}
    query = {n: v for n, v in chosen.items() if n in op.query}
    body = {n: v for n, v in chosen.items() if n in op.fields and n not in op.files}
    kwargs: dict[str, Any] = {"params": query, "headers": headers or {}}
    if op.body_type == "application/json":
        kwargs["json"] = body
    elif op.body_type is not None:
        kwargs["data"] = {k: str(v) for k, v in body.items()}
        uploads = [(n, (filename, image, "image/png")) for n in op.files if n in chosen]
        if uploads:
            kwargs["files"] = uploads
    return http.request(op.method, op.path, **kwargs)

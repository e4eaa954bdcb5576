"""``bdi serve``: the REST API under uvicorn (``BDI_BACKEND_HOST`` / ``BDI_BACKEND_PORT``)."""

from __future__ import annotations

import argparse

from configs.settings import load_settings


def add_serve_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the REST API (OpenAPI at /docs)")
    serve.add_argument("--host", default=None, help="default: BDI_BACKEND_HOST")
    serve.add_argument("--port", type=int, default=None, help="default: BDI_BACKEND_PORT")
    serve.add_argument(
        "--no-warmup", action="store_true", help="load the backbone on first use, not at start"
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge.api.app import create_app

    settings = load_settings()
    # a missing GPU or bad settings fail here, before binding; the backbone then loads in
    # the background while /health answers (/ready says when it is done)
    from engine.backbone import check_weights_source

    app = create_app(settings, warmup=not args.no_warmup)
    check_weights_source(settings.backbone, settings.backbone_weights)
    host = args.host or settings.backend_host
    port = args.port or settings.backend_port
    auth = "X-API-Key required" if settings.api_key else "no API key (BDI_API_KEY unset)"
    print(f"BDI Edge API on http://{host}:{port}  (docs: /docs, {auth})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0

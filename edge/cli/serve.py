"""``bdi serve``: the REST API under uvicorn (``BDI_BACKEND_HOST`` / ``BDI_BACKEND_PORT``).

The port is bound before anything is announced: a second ``bdi serve`` (or anything else)
on the port fails at once with one line and exit status 2, and the banner line
(:data:`BANNER`) means this process holds the port.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
from typing import NoReturn

from configs.settings import Settings, load_settings
from consumers.logs import json_logging

BANNER = "BDI Edge API on"  # printed once the port is ours; ``bdi up`` waits for it


class PortInUse(ValueError):
    """Another process listens on the port (``bdi: error: ...``, exit status 2)."""


def add_serve_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the REST API (OpenAPI at /docs)")
    serve.add_argument("--host", default=None, help="default: BDI_BACKEND_HOST")
    serve.add_argument("--port", type=int, default=None, help="default: BDI_BACKEND_PORT")
    serve.add_argument(
        "--no-warmup", action="store_true", help="load the backbone on first use, not at start"
    )
    serve.set_defaults(func=cmd_serve)


def listen_socket(host: str, port: int, hint: str = "(another bdi serve?)") -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening. ``PortInUse`` when something else
    has it; ``ValueError`` when the address cannot be bound at all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on
    # sockets that name it; without, Nagle holds each response's body until the client's
    # delayed ACK, ~40 ms per request on a keep-alive connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # a port left in TIME_WAIT by a previous run is free; a listening one is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is in use {hint}") from None
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def check_port_free(host: str, port: int, hint: str) -> None:
    """Raise ``PortInUse`` unless ``host:port`` could be bound now."""
    listen_socket(host, port, hint).close()


def _exit_cleanly(signum: int, frame: object) -> NoReturn:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with this
    # handler back in place: a requested stop is a clean exit (status 0), not a kill
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    host = args.host or settings.backend_host
    port = args.port or settings.backend_port
    hint = "(another bdi serve?); choose another with --port or BDI_BACKEND_PORT"
    sock = listen_socket(host, port, hint)
    # every line on stderr is one JSON object: uvicorn's and native libraries' (libpng on a
    # corrupt upload) included; the API's own events go to api.jsonl (docs/LOGGING.md)
    with contextlib.closing(sock), json_logging("WARNING"):
        _serve(args, settings, sock, host, port)
    return 0


def _serve(
    args: argparse.Namespace, settings: Settings, sock: socket.socket, host: str, port: int
) -> None:
    import uvicorn

    from edge.api.app import create_app
    from edge.ui.live import server
    from engine.backbone import check_weights_source

    # a missing GPU or bad settings fail here; the backbone then loads in the background
    # while /health answers (/ready says when it is done)
    app = create_app(settings, warmup=not args.no_warmup)
    check_weights_source(settings.backbone, settings.backbone_weights)
    auth = "X-API-Key required" if settings.api_key else "no API key (BDI_API_KEY unset)"
    print(f"{BANNER} http://{host}:{port}  (docs: /docs, {auth})", flush=True)
    # log_config=None: uvicorn's loggers reach the JSON handler instead of its own format
    config = uvicorn.Config(app, log_level="warning", access_log=False, log_config=None)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server(config, app).run(sockets=[sock])  # ends the live event streams at shutdown

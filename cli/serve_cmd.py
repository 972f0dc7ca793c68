"""``tokenrelay serve``: run the HTTP gateway (gateway/) under uvicorn."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP gateway (OpenAI API, SSE, status, cancel, health, metrics)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--keepalive-s", type=float, default=15.0, help="SSE keep-alive comment after this much silence")
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the other commands must not need the gateway extra.
    import uvicorn

    from gateway import create_app

    app = create_app(args.redis_url, args.broker_url, keepalive_s=args.keepalive_s)
    # One process, one event loop: the gateway holds no state, so scale by running more
    # of them behind a load balancer (any of them serves any request).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0

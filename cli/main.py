"""tokenrelay: stream LLM generations through a message queue (demo, worker, generate, submit, tail, cancel)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cli import demo, generate_cmd, tail_cmd, worker_cmd
from cli.render import EXIT_INTERRUPTED, note


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=None, help="streams and cancel keys (default: TOKENRELAY_REDIS_URL)")
    common.add_argument(
        "--broker-url", default=None, help="Celery broker (default: TOKENRELAY_BROKER_URL or the Redis URL)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    demo.add_parser(sub, common)
    worker_cmd.add_parser(sub, common)
    generate_cmd.add_parsers(sub, common)
    tail_cmd.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Commands handle Ctrl-C where there is something to clean up; this catches the
        # moments in between (imports, connecting) without a traceback.
        note("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

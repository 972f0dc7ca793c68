"""tokenrelay: stream LLM generations through a message queue (demo, worker, generate, submit, tail, cancel)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cli import batch_cmd, demo, generate_cmd, serve_cmd, tail_cmd, worker_cmd
from cli.render import EXIT_INTERRUPTED, note, report_error
from schemas import settings
from schemas.errors import ValidationError


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        default=None,
        help="streams and cancel keys; redis+cluster://host:port,... is a cluster (default: TOKENRELAY_REDIS_URL)",
    )
    common.add_argument(
        "--broker-url", default=None, help="Celery broker (default: TOKENRELAY_BROKER_URL or the Redis URL)"
    )
    return common


def version() -> str:
    """The installed distribution's version (a source tree that was never installed has none)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tokenrelay")
    except PackageNotFoundError:
        return "unknown (not installed)"


def environment_epilog() -> str:
    return "environment (an argument wins over its variable):\n" + settings.describe_environment()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenrelay",
        description=__doc__,
        epilog=environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the variables' table aligned
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    demo.add_parser(sub, common)
    worker_cmd.add_parser(sub, common)
    generate_cmd.add_parsers(sub, common)
    tail_cmd.add_parsers(sub, common)
    batch_cmd.add_parser(sub, common)
    serve_cmd.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        # Every variable is checked before any command runs: a typo anywhere (even one only a
        # worker reads) is one line naming it and exit 2, never a traceback from deep inside.
        settings.validate_environment()
        return int(args.func(args) or 0)
    except ValidationError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        # Commands handle Ctrl-C where there is something to clean up; this catches the
        # moments in between (imports, connecting) without a traceback.
        note("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

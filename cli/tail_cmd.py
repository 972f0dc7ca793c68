"""``tokenrelay tail ID`` and ``tokenrelay cancel ID``; `follow` is the streaming loop that
``generate`` and ``demo`` share."""

from __future__ import annotations

import argparse
from typing import Protocol

from cli.render import EXIT_INTERRUPTED, EXIT_OK, JsonRenderer, TextRenderer, note, report_error
from consumer import StreamReader
from schemas.cancel import CancelOutcome
from schemas.errors import TokenRelayError
from schemas.records import Record

DEFAULT_TIMEOUT_S = 60.0
# A library reader waits as long as a queued request exists; at a terminal, a queue that no
# worker serves (a typo in --queue or --model) should end with a message rather than an hour.
DEFAULT_QUEUE_TIMEOUT_S = 300.0


class Renderer(Protocol):
    """What `follow` needs from an output: `JsonRenderer` and `TextRenderer` both fit."""

    def add(self, record: Record) -> None: ...

    def close(self) -> None: ...


def follow(
    reader: StreamReader,
    request_id: str,
    renderer: Renderer,
    *,
    after: str = "0",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    cancel_on_exit: bool = False,
    queue_timeout_s: float | None = None,
) -> str | None:
    """Render the request's records until its last one; returns the last entry id seen.

    Errors (timeout, failure, not found) propagate after whatever arrived was rendered."""
    last: str | None = None
    try:
        records = reader.stream(
            request_id, after=after, timeout_s=timeout_s, cancel_on_exit=cancel_on_exit, queue_timeout_s=queue_timeout_s
        )
        for record in records:
            renderer.add(record)
            last = record.entry_id or last
    finally:
        renderer.close()  # end the line, show held choices, even when the stream broke off
    return last


def add_timeout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up when a running request sends no record for S seconds (default {DEFAULT_TIMEOUT_S:.0f}; "
        "0 = wait forever)",
    )
    p.add_argument(
        "--queue-timeout", type=float, default=DEFAULT_QUEUE_TIMEOUT_S, metavar="S",
        help=f"give up when no worker has started the request after S seconds in the queue "
        f"(default {DEFAULT_QUEUE_TIMEOUT_S:.0f}; 0 = wait as long as it exists)",
    )


def timeout_of(args: argparse.Namespace) -> float | None:
    return None if args.timeout is not None and args.timeout <= 0 else args.timeout


def queue_timeout_of(args: argparse.Namespace) -> float | None:
    value = getattr(args, "queue_timeout", DEFAULT_QUEUE_TIMEOUT_S)
    return None if value is not None and value <= 0 else value


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("tail", parents=[common], help="stream an existing request (from the start or a cursor)")
    p.add_argument("request_id", metavar="ID", help="the id that submit printed")
    p.add_argument(
        "--after", default="0", metavar="ENTRY_ID", help="resume after this entry id (default: from the start)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per record per line")
    add_timeout_option(p)
    p.set_defaults(func=run_tail)

    c = sub.add_parser(
        "cancel", parents=[common], help="stop a request (a queued one at once); exit 1 for an unknown id"
    )
    c.add_argument("request_id", metavar="ID")
    c.set_defaults(func=run_cancel)


def run_tail(args: argparse.Namespace) -> int:
    renderer = JsonRenderer() if args.json else TextRenderer()
    try:
        with StreamReader(args.redis_url) as reader:
            follow(
                reader, args.request_id, renderer, after=args.after, timeout_s=timeout_of(args),
                queue_timeout_s=queue_timeout_of(args),
            )  # fmt: skip
    except KeyboardInterrupt:
        # A tail is only an observer: leaving it must not stop the request for others.
        note(f"stopped following; request {args.request_id} goes on (`tokenrelay cancel` stops it)")
        return EXIT_INTERRUPTED
    except TokenRelayError as exc:
        return report_error(exc)
    return EXIT_OK


CANCEL_NOTES = {
    CancelOutcome.CANCELLED: "request {} cancelled (it was still queued)",
    CancelOutcome.SIGNALLED: "cancel requested for {}: its worker stops it at its next step",
    CancelOutcome.ENDED: "request {} had already ended: nothing to cancel",
}


def run_cancel(args: argparse.Namespace) -> int:
    """Exit 0 when the request is (or was already) stopped; an unknown or expired id exits 1."""
    try:
        with StreamReader(args.redis_url) as reader:
            outcome = reader.cancel(args.request_id)
    except TokenRelayError as exc:
        return report_error(exc)
    note(CANCEL_NOTES.get(outcome, "cancel requested for {}").format(args.request_id))
    return EXIT_OK

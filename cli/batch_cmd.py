"""``tokenrelay batch INPUT.jsonl [--out OUTPUT.jsonl] [--detach] [--resume BATCH_ID]``.

Reads an OpenAI batch file, submits it as one tokenrelay batch, shows a live progress bar
(done/total, tokens/s, ETA) on stderr and writes one result line per input line, in input
order (stdout without ``--out``).  Ctrl-C cancels the batch; with ``--detach`` the command
prints the batch id and returns at once, and ``--resume BATCH_ID`` (same input file) comes
back to it: items that never went out, were cancelled or failed are sent again, finished,
queued and running ones are not, then it waits and writes the results as above.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cli.render import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, note, report_error
from consumer import StreamReader
from consumer.batch import BatchProgress
from consumer.openai_batch import output_line
from producer import Producer
from producer.openai_batch import parse_jsonl
from schemas import keys
from schemas.errors import TokenRelayError

POLL_S = 0.5
RATE_WINDOW_S = 5.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "batch", parents=[common], help="run an OpenAI-style JSONL batch file: live progress, results in input order"
    )
    p.add_argument("input", metavar="INPUT.jsonl", help="lines of {custom_id, method, url, body}")
    p.add_argument("--out", metavar="OUTPUT.jsonl", default=None, help="where results go (default: stdout)")
    p.add_argument("--detach", action="store_true", help="print the batch id and exit; the batch goes on")
    p.add_argument("--resume", metavar="BATCH_ID", default=None, help="come back to a batch of this same input")
    p.add_argument("--model", default=None, help="serve every line with this model (overrides body.model)")
    p.add_argument("--queue", default=None, help="Celery queue (default: the model's)")
    p.set_defaults(func=run_batch)


def read_items(path: str, model: str | None) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        items = parse_jsonl(f)
    if model is not None:
        for item in items:
            item["model"] = model
    return items


def run_batch(args: argparse.Namespace) -> int:
    try:
        items = read_items(args.input, args.model)
        with Producer(args.redis_url, args.broker_url) as producer, StreamReader(args.redis_url) as reader:
            bid = start(producer, items, args)
            if args.detach:
                print(bid, flush=True)
                return EXIT_OK
            return follow(producer, reader, bid, args.out)
    except TokenRelayError as exc:
        return report_error(exc)


def start(producer: Producer, items: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if args.resume:
        redone = producer.resume_batch(args.resume, items, queue=args.queue)
        note(f"batch {args.resume}: sent again {len(redone)} of {len(items)} items")
        return str(args.resume)
    bid = keys.new_batch_id()  # chosen here so that an interrupted submission can be named
    note(f"batch {bid}: {len(items)} items (come back with --resume {bid})")
    try:
        producer.submit_batch(items, batch_id=bid, queue=args.queue)
    except KeyboardInterrupt:
        if not args.detach:
            producer.cancel_batch(bid)
        raise
    return bid


def follow(producer: Producer, reader: StreamReader, bid: str, out_path: str | None) -> int:
    try:
        progress = watch(reader, bid)
    except KeyboardInterrupt:
        producer.cancel_batch(bid)
        note(f"cancelled batch {bid} (its finished items stay readable: --resume {bid} sends the rest again)")
        return EXIT_INTERRUPTED
    write_results(reader, bid, progress, out_path)
    note(f"batch {bid}: {progress.done} done, {progress.failed} failed, {progress.cancelled} cancelled")
    return EXIT_OK if progress.done == progress.total else EXIT_FAILED


class TokenRate:
    """Tokens per second over the last few seconds of polls."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, tokens: int) -> float:
        self._samples.append((now, tokens))
        while now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        (t0, k0), (t1, k1) = self._samples[0], self._samples[-1]
        return (k1 - k0) / (t1 - t0) if t1 > t0 else 0.0


def watch(reader: StreamReader, bid: str) -> BatchProgress:
    console = Console(file=sys.stderr)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} tok/s"), TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
    )  # fmt: skip
    rate = TokenRate()
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task(bid, total=None, rate=0.0, extra="")
        while True:
            p = reader.batch(bid)
            extra = f"failed {p.failed} cancelled {p.cancelled}" if p.failed or p.cancelled else ""
            bar.update(
                task, completed=p.finished, total=p.total, rate=rate.add(time.monotonic(), p.tokens), extra=extra
            )
            if p.complete:
                return p
            time.sleep(POLL_S)


def write_results(reader: StreamReader, bid: str, progress: BatchProgress, out_path: str | None) -> None:
    out: TextIO = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout  # noqa: SIM115
    try:
        for item in reader.batch_results(bid, timeout_s=30.0):
            out.write(json.dumps(output_line(item, progress.model), ensure_ascii=False) + "\n")
    finally:
        if out_path:
            out.close()
        else:
            out.flush()

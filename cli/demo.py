"""``tokenrelay demo [PROMPT]``: the whole pipeline in one command, with nothing else running.

An embedded valkey-server (streams, cancel keys and the Celery broker at once), the model made
ready (the bundled SmolLM2 is converted on first use), a worker child process, then a producer
and a reader in this process streaming the reply to the terminal.  Everything started here is
stopped here, on success, failure and Ctrl-C alike; the machine's own Redis is never touched
(``TOKENRELAY_REDIS_URL`` is ignored; only an explicit ``--redis-url`` replaces the embedded one).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from cli.embedded import EmbeddedServerError, embedded_redis
from cli.render import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Progress,
    TextRenderer,
    note,
    report_error,
    show_conversation,
)
from consumer import StreamReader
from producer import Producer
from schemas.config import GenerationConfig
from schemas.errors import StreamTimeout, TokenRelayError
from schemas.settings import model_name
from workers.launcher import WorkerProcess, WorkerStartError
from workers.model_store import SMOLLM2_ALIASES, ModelNotFound, ensure_smollm2

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
WORKER_ARGS = ("--concurrency", "4", "--loglevel", "WARNING")
WORKER_START_TIMEOUT_S = 300.0  # a cold start on 2 cores imports torch and loads the model
WATCHDOG_S = 5.0  # how often a silent stream makes us check that the worker is still alive


class WorkerDied(RuntimeError):
    pass


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="run everything (server, worker, producer, reader) in one command",
        description="Run the whole pipeline with an embedded server; --redis-url uses that server instead.",
    )
    p.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, metavar="PROMPT")
    p.add_argument("--max-tokens", type=int, default=200, metavar="N")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="model name or folder (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--no-chat", action="store_true", help="send PROMPT as raw text, not through the chat template")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = GenerationConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=0.9, seed=args.seed)
    except TokenRelayError as exc:
        return report_error(exc)
    progress = Progress()
    try:
        with server(args, progress) as url:
            return run_pipeline(args, url, config, progress)
    except (EmbeddedServerError, ModelNotFound, WorkerStartError, WorkerDied) as exc:
        note(f"error: {exc}")
        return EXIT_FAILED
    except TokenRelayError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        note("interrupted: request cancelled; worker and server stopped")
        return EXIT_INTERRUPTED


@contextmanager
def server(args: argparse.Namespace, progress: Progress) -> Iterator[str]:
    """The embedded server's URL for the block (or the explicitly given one)."""
    if args.redis_url:
        yield args.redis_url
        return
    with ExitStack() as stack:
        # The phase covers the start only; the stack keeps the server up for the whole block.
        with progress.phase("starting embedded valkey-server", "valkey-server ready"):
            url = stack.enter_context(embedded_redis())
        yield url


def run_pipeline(args: argparse.Namespace, url: str, config: GenerationConfig, progress: Progress) -> int:
    name = model_name(args.model)
    if name in SMOLLM2_ALIASES:
        with progress.phase("preparing model files", "model files ready"):
            ensure_smollm2(progress.message)
    worker = WorkerProcess(redis_url=url, broker_url=args.broker_url or url, model=name, extra_args=WORKER_ARGS)
    try:
        with progress.phase("loading model in a worker", "worker ready"):
            worker.wait_ready(WORKER_START_TIMEOUT_S)
        return chat(args, url, config, worker)
    finally:
        worker.stop()


def chat(args: argparse.Namespace, url: str, config: GenerationConfig, worker: WorkerProcess) -> int:
    messages = None if args.no_chat else [{"role": "user", "content": args.prompt}]
    with Producer(url, args.broker_url or url) as producer, StreamReader(url) as reader:
        request_id = producer.submit(None if messages else args.prompt, messages=messages, config=config)
        renderer = TextRenderer(prefix=show_conversation(messages) if messages else "")
        try:
            watch(reader, request_id, renderer, worker)
        except KeyboardInterrupt:
            reader.cancel(request_id)  # before the worker stops: it ends the stream cleanly
            raise
        finally:
            renderer.close()
    return EXIT_OK


def watch(reader: StreamReader, request_id: str, renderer: TextRenderer, worker: WorkerProcess) -> None:
    """Stream to the end, resuming from the cursor after each quiet spell while the worker lives."""
    cursor = "0"
    while True:
        try:
            for record in reader.stream(request_id, after=cursor, timeout_s=WATCHDOG_S):
                renderer.add(record)
                cursor = record.entry_id or cursor
            return
        except StreamTimeout as exc:
            if not worker.alive():
                code = worker.proc.returncode
                raise WorkerDied(f"the worker exited with {code}; its log ends:\n{worker.log_tail()}") from exc

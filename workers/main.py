"""Starting a worker process: load the model once, start the engine thread, run Celery.

Celery runs with its thread pool: every in-flight task is a thread that waits on the one
engine of the process, so ``concurrency`` is how many requests the worker holds at once.
It defaults to the engine's ``max_running``, and with prefetch 1 the worker never reserves
more tasks than it can run.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from broker.app import make_celery
from schemas.job import DEFAULT_QUEUE, queue_for_model
from schemas.redis_util import connect
from schemas.settings import model_name, redis_url, ttl_s
from workers.engine.engine import Engine
from workers.engine.model_runner import load_model
from workers.engine.scheduler import Limits
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


def build_runner(opts: WorkerOptions, progress: Callable[[str], None] = log.info) -> tuple[EngineRunner, str]:
    """Start the engine thread; it loads the model (see workers/runner.py for why there)."""
    name = model_name(opts.model)
    url = redis_url(opts.redis_url)

    def build_engine() -> Engine:
        threads = opts.threads or int(os.environ.get("TOKENRELAY_TORCH_THREADS", "0") or 0)
        if threads:
            import torch

            torch.set_num_threads(threads)  # per thread in OpenMP: set it on the engine thread
        path = resolve_model_dir(name, progress)
        progress(f"loading {name} from {path}")
        loaded = load_model(name, path)
        progress(f"model ready on {loaded.device} ({next(loaded.model.parameters()).dtype})")
        return Engine(loaded, opts.limits or Limits(), opts.stream_interval)

    sink = StreamSink(connect(url), ttl_s(), url)
    return EngineRunner(build_engine, sink).start(), name


def model_matcher(name: str) -> Callable[[str | None], bool]:
    names = {name, os.path.basename(name.rstrip("/"))}
    if name in SMOLLM2_ALIASES:
        names |= SMOLLM2_ALIASES
    return lambda requested: requested is None or requested in names


def _touch_when_ready(path: str) -> None:
    from celery.signals import worker_ready

    def touch(**_kwargs: object) -> None:
        with open(path, "w") as f:
            f.write(str(os.getpid()))

    worker_ready.connect(touch, weak=False)


def run_worker(opts: WorkerOptions) -> None:
    logging.basicConfig(level=opts.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner, name = build_runner(opts)
    app = make_celery(opts.broker_url, opts.redis_url)
    register_generate_task(app, runner, model_matcher(name))
    if opts.ready_file:
        _touch_when_ready(opts.ready_file)
    limits = opts.limits or Limits()
    queues = opts.queues or [queue_for_model(name), DEFAULT_QUEUE]
    concurrency = opts.concurrency or limits.max_running
    hostname = opts.hostname or f"tokenrelay-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={opts.loglevel}",
        f"--hostname={hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    log.info("serving %s on queues %s with %d slots", name, ",".join(queues), concurrency)
    sys.stdout.flush()
    try:
        app.worker_main(argv=argv)
    finally:
        runner.stop()

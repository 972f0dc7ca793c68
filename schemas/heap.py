"""``freeze_startup_heap``: long-lived processes (worker, gateway) take what they loaded at
start out of the garbage collector's full walks.

Why: a full collection walks every tracked object, and the start-up heap is most of them
(torch, transformers, Celery and the model's modules in a worker: ~420k objects, ~0.2 s a
walk here; FastAPI and pydantic in the gateway: ~76k, ~30 ms).  Such a walk pauses every
thread of the process that needs the GIL: the worker's engine thread, the gateway's event
loop, so every running stream sees one slow token, about every 30 s under load.  What is
loaded at start lives as long as the process, so the walks find nothing there; frozen, a
full collection walks only what came after.  vLLM and SGLang freeze their heaps after
start-up for the same reason.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze everything alive; returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

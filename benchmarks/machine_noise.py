"""How unevenly this machine runs a fixed amount of work: the floor under any inter-token spread.

Why.  The load sweep's inter-token goal is a ratio of percentiles (p99 <= 2x p50), and on the
shared 2-core VMs this project runs on, the machine alone can break it: this probe, nothing
else running, has given p99/p50 from 1.3 to 2.7 within one session (README, benchmark 12,
"twelfth pass"; "tenth pass": 2.4 for a loop of the vocabulary projection alone).  An
engine's token gaps can be no steadier than the steps that make them, so a sweep that reports
the gaps' spread reports the machine's with it; this probe measures the machine's alone, in
the same run, so a reader can tell the two apart.

The unit of work is a decode step's linear products without the model: one product per
weight of SmolLM2-135M's 30 layers (fused q/k/v, o, fused gate/up, down; random values, the
same shapes, prepacked for oneDNN as the worker's are) over 4 rows, ~425 MB of fp32 weights
read per unit as a step reads them.  Units run back to back for a few seconds on torch's
default threads; their times' p50, p99 and p99/p50 are the result, for one unit (~25-50 ms, a
plain step at a few rows) and for windows of `WINDOW` units back to back (a step at a few
dozen rows, when the load is high: a longer step averages more of the machine's hiccups
out).  It runs in the calling process: call it while the engines under test are idle (or
stopped), or it measures them too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.common import percentile
from workers.engine.cpu_linear import PackedLinear, available

# SmolLM2-135M's per-layer weights as the worker multiplies them (cpu_linear.py fuses
# q/k/v and gate/up): (out, in) features.
LAYER_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))
LAYERS = 30
ROWS = 4
WINDOW = 4  # units a long window sums


@dataclass(frozen=True)
class Spread:
    """Percentiles of the time a fixed amount of work took."""

    samples: int
    p50_ms: float
    p99_ms: float

    @property
    def ratio(self) -> float:
        return self.p99_ms / self.p50_ms

    @classmethod
    def of(cls, seconds: list[float]) -> Spread:
        return cls(len(seconds), percentile(seconds, 50) * 1000, percentile(seconds, 99) * 1000)


@dataclass(frozen=True)
class Noise:
    """The machine's spread on one unit of work and on windows of `WINDOW` units."""

    unit: Spread
    window: Spread

    def describe(self) -> str:
        u, w = self.unit, self.window
        return (
            f"a fixed step's p99/p50 on this machine {u.ratio:.1f} ({u.p50_ms:.0f} / {u.p99_ms:.0f} ms), "
            f"over {WINDOW} of them {w.ratio:.1f} ({w.p50_ms:.0f} / {w.p99_ms:.0f} ms)"
        )


def _unit() -> Callable[[], None]:
    """One unit of work: the products of `LAYER_SHAPES` x `LAYERS` over `ROWS` rows, through the
    worker's own prepacked layers where oneDNN is there (cpu_linear.py), else plain ones."""
    torch.manual_seed(0)
    inputs = {in_features: torch.randn(ROWS, in_features) for _out, in_features in LAYER_SHAPES}
    products: list[tuple[torch.nn.Module, torch.Tensor]] = []
    for _ in range(LAYERS):
        for out_features, in_features in LAYER_SHAPES:
            linear = torch.nn.Linear(in_features, out_features, bias=False)
            packed = PackedLinear(linear) if available(linear) else linear
            products.append((packed, inputs[in_features]))

    def unit() -> None:
        for linear, x in products:
            linear(x)

    return unit


@torch.inference_mode()
def measure(seconds: float = 10.0) -> Noise:
    """Run the unit back to back for ``seconds`` (after a short warm-up) and sum it up."""
    unit = _unit()
    for _ in range(5):
        unit()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20 * WINDOW:
        start = time.perf_counter()
        unit()
        times.append(time.perf_counter() - start)
    windows = [sum(times[i : i + WINDOW]) for i in range(0, len(times) - WINDOW + 1, WINDOW)]
    return Noise(Spread.of(times), Spread.of(windows))


if __name__ == "__main__":
    print(measure().describe())

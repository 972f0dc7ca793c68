"""Shared helpers: the stack under test, statistics, rows, and the table/JSON/plot writers."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.launcher import Stack, start_stack

# Default worker for scenarios 1-4: 16 decoding at once; 64 Celery slots so that scenario 4's
# burst waits inside the engine's FCFS queue rather than in the broker.
MAIN_WORKER_ARGS: list[str] = []  # the defaults: 64 requests decoded together, 64 held


# -- rows --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a pipeline figure next to its in-process reference."""

    scenario: str
    metric: str
    pipeline: float | None
    reference: float | None = None
    unit: str = ""
    goal: str = ""  # human-readable, e.g. "ratio >= 0.97"
    passed: bool | None = None  # None: informational, no goal
    note: str = ""
    ref_label: str = "in-process"  # what the reference column holds, for the plot

    @property
    def ratio(self) -> float | None:
        if self.pipeline is None or not self.reference:
            return None
        return self.pipeline / self.reference


# -- the stack ---------------------------------------------------------------------------


@dataclass
class Context:
    """What scenarios share: the server, the main worker (lazy) and the reference model (lazy)."""

    quick: bool
    url: str
    _stack: Stack | None = None
    _ref: Any = None

    def stack(self) -> Stack:
        if self._stack is None:
            self._stack = start_stack(self.url, extra_args=MAIN_WORKER_ARGS)
        return self._stack

    def ref(self) -> Any:
        """The in-process reference model (imports torch only when a scenario needs it)."""
        if self._ref is None:
            from benchmarks.reference import RefModel

            self._ref = RefModel.load()
        return self._ref

    def stop_worker(self) -> None:
        """Free the 2 cores before a scenario that starts a worker of its own."""
        if self._stack is not None:
            self._stack.stop()
            self._stack = None

    def close(self) -> None:
        self.stop_worker()


# -- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


# -- machine and report ------------------------------------------------------------------


def machine_line() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load:.2f} at start"
    )


def busy_warning() -> str | None:
    """Other processes on the cores make torch's thread pool stall (figures swing 10x)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.5 * cores:
        return None
    return f"WARNING: load average {load:.2f} on {cores} cores: other work is running; figures will be noisy"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _verdict(row: Row) -> str:
    return "" if row.passed is None else "PASS" if row.passed else "MISS"


def format_table(rows: Sequence[Row]) -> str:
    header = ("scenario", "metric", "pipeline", "in-process ref", "ratio/goal", "result")
    lines = [header]
    for r in rows:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else ""
        goal = " | ".join(x for x in (ratio, r.goal) if x)
        unit = f" {r.unit}" if r.unit else ""
        lines.append((r.scenario, r.metric, _fmt(r.pipeline) + unit, _fmt(r.reference) + unit, goal, _verdict(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  note [{r.scenario}] {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(out + notes)


def write_json(path: Path, machine: str, quick: bool, rows: Sequence[Row], elapsed_s: float) -> None:
    doc = {
        "machine": machine,
        "quick": quick,
        "elapsed_s": round(elapsed_s, 1),
        "rows": [{**asdict(r), "ratio": r.ratio, "verdict": _verdict(r) or None} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2, allow_nan=True))


def write_plot(path: Path, machine: str, rows: Sequence[Row]) -> None:
    """One small panel per metric: the pipeline bar next to its reference bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.pipeline is not None and r.pipeline == r.pipeline]
    cols = 4
    nrows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, shown, strict=False):
        labels, values, colors = ["pipeline"], [r.pipeline], ["tab:blue"]
        if r.reference is not None:
            labels.append(r.ref_label)
            values.append(r.reference)
            colors.append("tab:gray")
        ax.bar(labels, values, color=colors)
        mark = {True: " ✓", False: " ✗", None: ""}[r.passed]
        ax.set_title(f"{r.scenario}: {r.metric}{mark}", fontsize=8)
        ax.set_ylabel(r.unit, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle(f"tokenrelay benchmarks — {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""``python -m benchmarks [--quick] [--only 1,3,5] [--out benchmarks/results]``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import (
    Context,
    Row,
    busy_warning,
    format_table,
    machine_line,
    write_json,
    write_plot,
)
from cli.embedded import embedded_redis

SCENARIOS = {
    1: "s1_single_stream",
    2: "s2_ttft",
    3: "s3_batch",
    4: "s4_poisson",
    5: "s5_stream_layer",
    6: "s6_cancel",
    7: "s7_memory",
    8: "s8_takeover",
    10: "s10_gateway",
    11: "s11_dashboard",
    12: "s12_load_sweep",
    13: "s13_scaleout",
    14: "s14_engines",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="tokenrelay benchmark suite")
    p.add_argument("--quick", action="store_true", help="shrink every scenario (a smoke run of a few minutes)")
    p.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,3,5 (default: all)")
    p.add_argument("--out", default="benchmarks/results", help="folder for results.json and results.png")
    return p.parse_args(argv)


def chosen(only: str | None) -> list[int]:
    if not only:
        return list(SCENARIOS)
    picked = [int(x) for x in only.split(",") if x.strip()]
    unknown = [n for n in picked if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    return picked


def run_scenario(number: int, ctx: Context) -> list[Row]:
    module = importlib.import_module(f"benchmarks.{SCENARIOS[number]}")
    started = time.perf_counter()
    print(f"== scenario {number} ({SCENARIOS[number]}) ...", flush=True)
    try:
        rows: list[Row] = module.run(ctx)
    except Exception as exc:  # one broken scenario must not hide the others' figures
        traceback.print_exc()
        rows = [Row(f"{number} {SCENARIOS[number]}", "FAILED", None, note=f"{type(exc).__name__}: {exc}")]
    print(f"   done in {time.perf_counter() - started:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    if warning := busy_warning():
        print(warning, flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    with embedded_redis() as url:
        ctx = Context(quick=args.quick, url=url)
        try:
            for number in chosen(args.only):
                rows += run_scenario(number, ctx)
        finally:
            ctx.close()
    elapsed = time.perf_counter() - started
    print(f"\nmachine: {machine}\n{'quick' if args.quick else 'full'} run, {elapsed:.0f} s\n")
    print(format_table(rows))
    write_json(out / "results.json", machine, args.quick, rows, elapsed)
    write_plot(out / "results.png", machine, rows)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

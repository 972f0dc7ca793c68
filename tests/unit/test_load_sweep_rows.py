"""Scenario 12's table rows (benchmarks/s12_load_sweep.py): which checks pass, and what the
inter-token row tells beside them (pure logic: the scenario itself runs real servers); and
the machine-noise probe the sweep reports beside them (benchmarks/machine_noise.py)."""

from __future__ import annotations

from benchmarks.common import Row
from benchmarks.machine_noise import WINDOW, Noise, Spread, measure
from benchmarks.s12_load_sweep import SCENARIO_4, _noise_row, _rows


def result(
    itl50: float, itl99: float, tok_s: float = 100.0, ttft50: float = 150.0, ttft99: float = 300.0
) -> dict[str, float]:
    return {
        "requests": 64.0,
        "offered_tok_s": 134.0,
        "tok_s": tok_s,
        "ttft_p50_ms": ttft50,
        "ttft_p99_ms": ttft99,
        "itl_p50_ms": itl50,
        "itl_p99_ms": itl99,
    }


def inter_token_row(rows: list[Row], at: str) -> Row:
    return next(r for r in rows if r.metric == f"inter-token p99, {at}")


def test_the_inter_token_goal_is_ours_and_the_note_gives_vllms_own_spread() -> None:
    rows = _rows(160.0, {"125% load": result(60.0, 130.0)}, {"125% load": result(40.0, 96.0)})
    row = inter_token_row(rows, "125% load")
    assert row.passed is False  # 130 > 2 x 60, whatever vLLM's own spread
    assert row.goal == "p99/p50 2.2 <= 2"
    assert row.note.endswith("vLLM's own p99/p50 2.4")


def test_without_vllm_the_goal_still_holds_and_the_note_says_nothing_of_it() -> None:
    rows = _rows(160.0, {"25% load": result(50.0, 90.0)}, {})
    row = inter_token_row(rows, "25% load")
    assert row.passed is True
    assert "vLLM" not in row.note


def test_scenario_4s_ratios_are_checked_against_vllm() -> None:
    ours = {SCENARIO_4: result(50.0, 90.0, tok_s=100.0, ttft50=300.0, ttft99=700.0)}
    theirs = {SCENARIO_4: result(45.0, 90.0, tok_s=120.0, ttft50=110.0, ttft99=200.0)}
    checked = {r.metric: r.passed for r in _rows(160.0, ours, theirs) if r.passed is not None}
    assert checked == {
        f"tokens/s, {SCENARIO_4}": False,  # 100 < 0.9 x 120
        f"TTFT p50, {SCENARIO_4}": True,  # 300 <= 3 x 110
        f"TTFT p99, {SCENARIO_4}": False,  # 700 > 3 x 200
        f"inter-token p99, {SCENARIO_4}": True,
    }


def test_the_machine_noise_row_reports_the_worse_of_the_two_probes() -> None:
    before = Noise(Spread(500, 20.0, 30.0), Spread(125, 80.0, 100.0))
    after = Noise(Spread(480, 20.0, 50.0), Spread(120, 80.0, 120.0))
    row = _noise_row([before, after])
    assert row.pipeline == 2.5 and row.passed is None  # information: no goal of its own
    assert row.note == (
        "before: a fixed step's p99/p50 on this machine 1.5 (20 / 30 ms), over 4 of them 1.2 (80 / 100 ms); "
        "after: a fixed step's p99/p50 on this machine 2.5 (20 / 50 ms), over 4 of them 1.5 (80 / 120 ms)"
    )


def test_the_probe_times_real_products_and_windows_of_them() -> None:
    noise = measure(0.05)  # at least 20 windows, however fast the machine
    assert noise.unit.samples >= 20 * WINDOW and noise.window.samples == noise.unit.samples // WINDOW
    assert 0 < noise.unit.p50_ms <= noise.unit.p99_ms
    # A window is WINDOW units back to back: its median is about WINDOW units' (the margin:
    # the machine's speed moves while it runs).
    assert noise.window.p50_ms >= WINDOW * noise.unit.p50_ms / 2

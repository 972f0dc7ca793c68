"""Scenario 12's table rows (benchmarks/s12_load_sweep.py): which checks pass, and what the
inter-token row tells beside them (pure logic: the scenario itself runs real servers)."""

from __future__ import annotations

from benchmarks.common import Row
from benchmarks.s12_load_sweep import SCENARIO_4, _rows


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

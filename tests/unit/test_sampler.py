"""The sampler's draws (sampler.py): the distribution they follow, the tokens top-k/top-p cut
never drawn, and the same draws for the same (seed, choice, position)."""

from __future__ import annotations

import math

import pytest
import torch

from workers.engine.sampler import RowSampling, draw, nucleus, sample


def _row(seed: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, position: int = 0) -> RowSampling:
    return RowSampling(temperature, top_p, top_k, seed, index=0, position=position, top_logprobs=-1)


def test_draws_follow_the_distribution() -> None:
    """Pearson's chi-square over 20,000 seeded draws from a fixed 8-token distribution stays
    below the 0.999 quantile of chi2 with 7 degrees of freedom (24.3)."""
    probs = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    logits = probs.log()
    gen = torch.Generator()
    counts = [0] * len(probs)
    n = 20_000
    for i in range(n):
        gen.manual_seed(i)
        counts[draw(logits, gen)] += 1
    chi2 = sum((c - n * float(p)) ** 2 / (n * float(p)) for c, p in zip(counts, probs, strict=True))
    assert chi2 < 24.3, (counts, chi2)


def test_tiny_probabilities_are_still_drawn_in_a_large_vocabulary() -> None:
    """A token of probability 1e-3 at the end of a 49k vocabulary whose other tokens share the
    rest: drawn about as often as it should be (float64 CDF)."""
    logits = torch.zeros(49_152)
    logits[-1] = math.log(1e-3 / (1 - 1e-3) * 49_151)
    gen = torch.Generator()
    hits = 0
    for i in range(20_000):
        gen.manual_seed(i)
        hits += draw(logits, gen) == 49_151
    assert 8 <= hits <= 40  # expected 20 (seeded: the same draws on every run)


@pytest.mark.parametrize("cut", [{"top_k": 3}, {"top_p": 0.5}])
def test_tokens_cut_by_top_k_or_top_p_are_never_drawn(cut: dict[str, float]) -> None:
    logits = torch.tensor([[4.0, 3.5, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    allowed = {0, 1, 2} if "top_k" in cut else {0, 1}  # top_p 0.5: 0.43 + 0.26 reaches it
    seen = {sample(logits, [_row(seed, **cut)])[0].token_id for seed in range(2000)}  # type: ignore[arg-type]
    assert seen == allowed


def test_the_same_seed_choice_and_position_draw_the_same_token() -> None:
    logits = torch.randn(1, 1000)
    first = [sample(logits, [_row(7, position=p)])[0].token_id for p in range(20)]
    again = [sample(logits, [_row(7, position=p)])[0].token_id for p in range(20)]
    other = [sample(logits, [_row(8, position=p)])[0].token_id for p in range(20)]
    assert first == again
    assert first != other


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.randn(3, 50)
    rows = [_row(1, temperature=0.0), _row(2), _row(3, temperature=0.0)]
    got = sample(logits, rows)
    assert got[0].token_id == int(logits[0].argmax()) and got[2].token_id == int(logits[2].argmax())


def _nucleus_by_sorting(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """The definition, over the whole sorted vocabulary (the sampler's first version, with its
    partial sums in float64 as `nucleus` has them)."""
    sorted_x, order = torch.sort(x, descending=True)
    p = torch.softmax(sorted_x, dim=-1).double()
    drop_sorted = (p.cumsum(dim=-1) - p) >= top_p
    return ~torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)


def _check_nucleus(x: torch.Tensor, top_p: float, got: torch.Tensor) -> None:
    """The definition: the smallest most-probable prefix whose mass reaches top_p (to within
    the rounding of 49k partial sums); the sorting version may differ only at the edge, by
    tokens that rounding tips either way (a flat tail: several, of negligible mass)."""
    p = torch.softmax(x, dim=-1)  # the float32 probabilities `nucleus` ranks
    kept, dropped = p[got].double(), p[~got].double()
    assert kept.numel() >= 1 and got[int(x.argmax())]  # the top token always stays
    if dropped.numel():
        assert float(kept.min()) >= float(dropped.max())  # a most-probable prefix
        assert float(kept.sum()) >= top_p - 1e-6  # it reaches top_p
    assert float(kept.sum() - kept.min()) < top_p + 1e-6  # and no smaller prefix does
    differ = got ^ _nucleus_by_sorting(x, top_p)
    assert float(p[differ].double().sum()) < 1e-4  # a few tokens at the edge (ties, rounding)


@pytest.mark.parametrize("scale", [0.05, 0.5, 3.0, 12.0])  # flat (the whole-sort path) .. peaked
@pytest.mark.parametrize("top_p", [0.01, 0.3, 0.9, 0.95, 0.999])
def test_nucleus_is_the_smallest_prefix_reaching_top_p(scale: float, top_p: float) -> None:
    gen = torch.Generator().manual_seed(int(scale * 100) + int(top_p * 1000))
    for _ in range(5):
        x = torch.randn(49_152, generator=gen) * scale
        _check_nucleus(x, top_p, nucleus(x, top_p))


def test_nucleus_after_top_k_keeps_only_finite_tokens() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 4
    kth = torch.topk(x, 10).values[-1]
    x = x.masked_fill(x < kth, float("-inf"))
    got = nucleus(x, 0.999999)
    _check_nucleus(x, 0.999999, got)
    assert int(got.sum()) <= 10 and bool(torch.isfinite(x[got]).all())


def test_nucleus_of_a_peaked_distribution_looks_at_few_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path: a nucleus inside the first 64 tokens never sorts the vocabulary."""
    monkeypatch.setattr(torch, "sort", lambda *a, **k: pytest.fail("sorted the whole vocabulary"))
    x = torch.randn(49_152, generator=torch.Generator().manual_seed(4))
    x[:5] += 20.0
    got = nucleus(x, 0.9)
    monkeypatch.undo()  # the check below sorts
    assert int(got.sum()) <= 5
    _check_nucleus(x, 0.9, got)

"""BatchCache against a plain model of it: rows join, leave (holes filled from the end), fork
and decode in random order, and every engine row still sees exactly its own keys, values,
mask and position."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.cache_utils import DynamicCache

from workers.engine.kv_cache import _GROW, BatchCache

LAYERS, HEADS, DIM = 2, 2, 4


def fresh(lengths: list[int], rng: random.Random) -> tuple[BatchCache, list[list[torch.Tensor]]]:
    """A prefill's cache for rows of these lengths (left-padded), and each row's real columns."""
    width = max(lengths)
    cache = DynamicCache()
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, width - n :] = 1
    for layer in range(LAYERS):
        keys = torch.randn(
            len(lengths), HEADS, width, DIM, generator=torch.Generator().manual_seed(rng.randrange(2**31))
        )
        cache.update(keys, keys * 2, layer)
    batch = BatchCache(cache, mask, mask.sum(dim=1))
    real = [[batch.layers[0].keys[r, :, width - n + i].clone() for i in range(n)] for r, n in enumerate(lengths)]
    return batch, real


@torch.inference_mode()  # as ModelRunner.decode
def decode_step(batch: BatchCache, real: list[list[torch.Tensor]]) -> None:
    """What a decode pass does to the cache: one new column, written in buffer order."""
    new = torch.randn(batch.rows, HEADS, 1, DIM)
    for layer in batch.layers:
        layer.update(new, new * 2)
    for j, row in enumerate(batch.order):
        real[j].append(new[row, :, 0])
    batch.append_step()


def check(batch: BatchCache, real: list[list[torch.Tensor]]) -> None:
    assert len(batch.order) == len(real) == batch.rows
    keys, values = batch.layers[0].keys, batch.layers[0].values
    # Padding columns are attended to with weight 0, and NaN * 0 is NaN: never garbage.
    assert torch.isfinite(keys).all() and torch.isfinite(values).all()
    for j, row in enumerate(batch.order):
        cols = batch.mask[row].nonzero().flatten().tolist()
        assert len(cols) == len(real[j]) == int(batch.positions[row])
        assert cols == list(range(batch.length - len(cols), batch.length))  # right-aligned
        for col, want in zip(cols, real[j], strict=True):
            assert torch.equal(keys[row, :, col], want)
            assert torch.equal(values[row, :, col], want * 2)


@pytest.fixture(params=["fresh memory", "NaN-filled memory"])
def poisoned(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers are allocated without zeroing: with every new one full of NaN, no NaN may show."""
    if request.param == "NaN-filled memory":
        monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, size: self.new_full(size, float("nan")))


# Bytes of keys and values per row and column, all layers (fp32).
PER_COLUMN = LAYERS * 2 * HEADS * DIM * 4


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("reserved", [None, 12], ids=["growing", "reserved"])
def test_random_joins_leaves_forks_and_steps_keep_every_row_its_own_cache(reserved: int | None) -> None:
    rng = random.Random(7)
    for _trial in range(20):
        batch, real = fresh([rng.randint(1, 6) for _ in range(rng.randint(1, 4))], rng)
        if reserved is not None:  # a small reservation: moves, slides and growth past it all happen
            batch.reserve(6, budget=6 * PER_COLUMN * reserved)
        for _op in range(25):
            op = rng.choice(["step", "step", "leave", "join", "fork"])
            if op == "step" and batch.rows:
                decode_step(batch, real)
            elif op == "leave" and batch.rows > 1:
                kept = sorted(rng.sample(range(batch.rows), rng.randint(1, batch.rows - 1)))
                batch.keep(kept)
                real = [real[i] for i in kept]
            elif op == "join":
                other, their = fresh([rng.randint(1, 9) for _ in range(rng.randint(1, 3))], rng)
                if rng.random() < 0.5 and other.rows > 1:  # a prefill cache whose rows were culled
                    kept = [other.rows - 1]
                    other.keep(kept)
                    their = [their[i] for i in kept]
                batch.extend(other)
                real += their
            elif op == "fork" and batch.rows:
                rows = [rng.randrange(batch.rows) for _ in range(rng.randint(1, 4))]
                batch.keep(rows)
                real = [list(real[i]) for i in rows]
            check(batch, real)


def test_a_row_leaving_from_the_middle_moves_one_row_not_the_cache() -> None:
    batch, real = fresh([3] * 6, random.Random(1))
    buffer = batch.layers[0]._k
    batch.keep([0, 1, 3, 4, 5])
    assert batch.layers[0]._k is buffer  # no new buffer: the hole was filled in place
    assert batch.order == [0, 1, 3, 4, 2]  # the last row moved into row 2
    check(batch, [real[i] for i in (0, 1, 3, 4, 5)])


def test_a_longer_prompt_joining_and_the_longest_row_leaving_move_no_running_row() -> None:
    rng = random.Random(3)
    batch, real = fresh([3] * 4, rng)
    other, their = fresh([5], rng)
    batch.extend(other)  # the first one makes room on the left (and spare rows)
    real += their
    buffer = batch.layers[0]._k
    longer, theirs = fresh([9], rng)
    batch.extend(longer)  # widens into the room on the left: zeros written, no row moved
    real += theirs
    assert batch.layers[0]._k is buffer and batch.length == 9
    check(batch, real)
    batch.keep([0, 1, 2, 3, 4])  # the 9-token row leaves: 4 columns are padding everywhere
    assert batch.layers[0]._k is buffer and batch.length == 5
    check(batch, real[:5])
    decode_step(batch, real := real[:5])
    check(batch, real)


@pytest.mark.usefixtures("poisoned")
def test_the_window_slides_back_in_place_when_it_reaches_the_buffers_end() -> None:
    rng = random.Random(5)
    batch, real = fresh([40, 2, 3], rng)
    for _ in range(8):
        decode_step(batch, real)
    batch.keep([1, 2])  # the 48-column row leaves: its columns are padding everywhere now
    real = real[1:]
    layer = batch.layers[0]
    buffer, start = layer._k, layer._start
    assert start >= _GROW // 2
    for _ in range(layer._spare()[0] + 3):  # past the right end of the buffer
        decode_step(batch, real)
        check(batch, real)
    assert layer._k is buffer and layer._start == 0  # slid back, no new memory


@pytest.mark.usefixtures("poisoned")
def test_a_reserved_cache_allocates_once_while_rows_join_and_columns_fill() -> None:
    rng = random.Random(11)
    batch, real = fresh([4], rng)
    batch.reserve(8, budget=8 * PER_COLUMN * 200)
    assert batch.layers[0]._k.shape[0] == 1  # nothing taken yet: a lone short request pays nothing
    other, their = fresh([3], rng)
    batch.extend(other)  # the first growth takes the reservation
    real += their
    buffer = batch.layers[0]._k
    assert buffer.shape[0] >= 8 and buffer.shape[2] >= 200
    for _ in range(6):  # six more rows join, some with longer prompts than the batch's columns
        other, their = fresh([rng.randint(1, 12)], rng)
        batch.extend(other)
        real += their
        for _ in range(20):
            decode_step(batch, real)
        check(batch, real)
    assert batch.layers[0]._k is buffer and batch.rows == 8


@pytest.mark.usefixtures("poisoned")
def test_a_longer_prompt_moves_the_filled_part_right_within_a_reserved_buffer() -> None:
    rng = random.Random(13)
    batch, real = fresh([3, 2], rng)
    batch.reserve(4, budget=4 * PER_COLUMN * 300)
    for _ in range(70):  # past the first buffer's spare columns: the reservation is taken
        decode_step(batch, real)
    layer = batch.layers[0]
    buffer = layer._k
    assert buffer.shape[2] == 300 and layer._start < 80
    longer, theirs = fresh([layer._start + 90], rng)  # more padding than there is room on the left
    batch.extend(longer)
    real += theirs
    assert layer._k is buffer  # moved right in place, not copied into a new buffer
    check(batch, real)
    decode_step(batch, real)
    check(batch, real)

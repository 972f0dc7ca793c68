"""The engine core: admission, forward passes, the batch KV cache and sampling (torch).

Theory of operation.  Requests wait in arrival order.  Each `EngineCore.step()` is one forward
pass that decodes one token for every running row and, packed into the same pass, prefills
the next chunk of the requests being admitted (packed.py).  When no prefill is under way and
requests wait, the ones that fit the limits (scheduler.py) start one: their prompts form one
left-padded batch (``n`` choices share one prompt row and fork into ``n`` rows at the end; a
resumed request has a row per choice, prompt plus published tokens).  While rows decode, a
step takes a chunk of prompt tokens (the prompt spread evenly over the steps it needs:
`_columns`), so a joining prompt costs the running rows a little per step instead of stalling
them for a whole prefill pass (more when more requests wait than rows decode: `_budget`); with
no row decoding, nobody waits for a token and the prompts go whole.  The chunk is
``Limits.prefill_chunk`` (32), or with "auto" (None) as large as keeps a step within
``Limits.step_slowdown`` (1.7) plain decode steps, learned from the passes' own times
(chunk_sizer.py).  The chunks build the prompts' own KV cache; the pass that completes it also
samples their first tokens.  Requests stay in `waiting` until then (cancelling one drops its
share of the prefill), and in `running` from then on.  Each row samples from its own random
stream (sampler.py).  The step returns a `CoreStep`: token ids and raw logprobs per row, nothing
of text.  The output processor (output.py) turns those into records and says which choices
finished; `finish()` then frees their rows.

Rows and the KV cache stay aligned in one object, `BatchState`: row ``i`` of its list is row
``i`` of the cache's keys, values, mask and positions, and every change of either goes through
it.  Freshly prefilled rows join the batch only in `finish()`, once it is known which of them
go on (a choice can end on its first token), so a finished row never costs a cache copy.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Iterable

import torch

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo
from workers.engine.chunk_sizer import ChunkSizer
from workers.engine.kv_cache import BatchCache
from workers.engine.model_runner import LoadedModel, ModelRunner
from workers.engine.output import CoreStep, Finished, Resume
from workers.engine.packed import Prompts
from workers.engine.sampler import RowSampling, sample
from workers.engine.scheduler import Limits, admit
from workers.engine.sequence import Choice, Request

Row = tuple[Request, Choice]
NON_FINITE = ErrorInfo("model_error", "the model produced non-finite logits (NaN or inf)")


class BatchState:
    """The running rows and their KV cache: row ``i`` of `rows` is row ``i`` of `cache`."""

    def __init__(self, max_rows: int) -> None:
        self.rows: list[Row] = []
        self.cache: BatchCache | None = None
        self.max_rows = max_rows  # what the cache reserves room for when it starts

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0

    def last_tokens(self) -> list[int]:
        return [c.last_token for _r, c in self.rows]

    def join(self, rows: list[Row], cache: BatchCache, keep: list[int]) -> None:
        """Append prefilled ``rows`` (aligned with ``cache``), only those at ``keep``."""
        if not keep:
            return
        if len(keep) < len(rows):
            cache.keep(keep)
            rows = [rows[i] for i in keep]
        if self.cache is None:
            self.cache = cache
            cache.reserve(max(self.max_rows, cache.rows))
        else:
            self.cache.extend(cache)
        self.rows.extend(rows)

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (ascending)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if self.rows and self.cache is not None:
            self.cache.keep(keep)
        else:
            self.cache = None

    def remove(self, req: Request) -> None:
        self.keep([i for i, (r, _c) in enumerate(self.rows) if r is not req])


class Prefill:
    """Requests whose prompts are being prefilled (one left-padded batch, maybe over several
    steps), and the time of the passes that carried their chunks."""

    def __init__(self, requests: list[Request], device: torch.device, budget: int | None) -> None:
        self.requests = requests  # the head of `EngineCore.waiting`, in order, until complete
        prompts, self.owners = _prefill_rows(requests)
        self.prompts = Prompts(prompts, device)
        self.budget = budget  # prompt tokens per step while rows decode (None: none did at admission)
        self.started = time.time()
        self.spent = 0.0


class EngineCore:
    def __init__(self, loaded: LoadedModel, limits: Limits) -> None:
        self.loaded = loaded
        self.runner = ModelRunner(loaded)
        self.limits = limits
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self.batch = BatchState(limits.max_batch_rows)
        self._prefill: Prefill | None = None  # under way; its requests are still waiting
        self._joining: tuple[list[Row], BatchCache] | None = None  # prefilled, not in the batch yet
        # fed and used only with prefill_chunk "auto"
        self._chunks = ChunkSizer(limits.max_batch_tokens, slowdown=limits.step_slowdown)

    # -- requests -------------------------------------------------------------------------

    def add(self, request_id: str, prompt_ids: list[int], config: GenerationConfig, resume: Resume | None) -> None:
        """Queue a request; a resumed one brings the tokens already published per choice."""
        tokens = resume.tokens if resume is not None else {}
        done = resume.finished if resume is not None else {}
        choices = [Choice(i, list(tokens.get(i, [])), i in done) for i in range(config.n)]
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        self.waiting.append(Request(request_id, prompt_ids, config, seed, choices))

    def remove(self, request_id: str) -> bool:
        """Take a request out (waiting or running, its rows too); False if it is not here."""
        for req in self.waiting:
            if req.request_id == request_id:
                self.waiting.remove(req)
                self._drop_from_prefill(req)
                return True
        running = self.running.pop(request_id, None)
        if running is None:
            return False
        self.batch.remove(running)
        return True

    def abandon_pass(self) -> set[str]:
        """After a pass failed: drop the batch and the prefill under way; the running requests
        and those being prefilled are returned, for the caller to end."""
        prefilling = {req.request_id for req in self._prefill.requests} if self._prefill else set()
        self._prefill = self._joining = None
        self.batch = BatchState(self.limits.max_batch_rows)
        return set(self.running) | prefilling

    # -- passes ---------------------------------------------------------------------------

    def step(self) -> CoreStep | None:
        """One forward pass: a decode step for every running row and a prefill chunk (a new
        prefill starts when requests wait); None when there is nothing to run."""
        if self._prefill is None:
            self._prefill = self._admit()
        prefill, rows = self._prefill, self.batch.rows
        if prefill is None and not rows:
            return None
        started = time.time()
        prompts = prefill.prompts if prefill is not None else None
        columns = self._columns(prefill)
        decoded, prompted = self.runner.run(self.batch.cache, self.batch.last_tokens(), prompts, columns)
        step = self._sample(rows, decoded) if decoded is not None else CoreStep([], time.time())
        if self.limits.prefill_chunk is None and rows and self.runner.packs:
            # "auto": what the step cost its rows (timed to the sampled tokens: a GPU's pass is over)
            self._chunks.observe(columns * prompts.rows if prompts is not None else 0, time.time() - started)
        step.decoded = list({r.request_id: None for r, _c in rows})
        if prefill is not None:
            prefill.spent += time.time() - started
            if prompted is not None:  # its prompts are complete: first tokens
                self._complete(prefill, prompted, step)
        return step

    def finish(self, finished: Iterable[Finished]) -> None:
        """The output processor's verdict on the last step: these choices are done."""
        for rid, index in finished:
            req = self.running.get(rid)
            if req is not None:
                req.choices[index].finished = True
                if req.finished:
                    del self.running[rid]
        self.batch.keep([i for i, (_r, c) in enumerate(self.batch.rows) if not c.finished])
        if self._joining is not None:
            rows, cache = self._joining
            self._joining = None
            self.batch.join(rows, cache, [i for i, (_r, c) in enumerate(rows) if not c.finished])

    def _admit(self) -> Prefill | None:
        budget = self._budget()
        joined = admit(self.waiting, len(self.running), len(self.batch.rows), self.limits, budget)
        return Prefill(joined, self.runner.device, budget) if joined else None

    def _budget(self) -> int | None:
        """Prompt tokens per step while rows decode (None: no row decodes, prompts go whole).

        One chunk's worth at a time keeps the running rows' steps short, and short prompts
        share a chunk, so a request does not wait for a long one admitted with it.  But when
        more requests wait than rows decode (a burst: 16 arriving at once), their first tokens
        matter more than the few rows' next ones: the budget grows to a chunk per running row
        waited for, so the burst is admitted in a step or two instead of one chunk per step."""
        rows = len(self.batch.rows)
        if not rows:
            return None
        chunk = self.limits.prefill_chunk or self._chunks.chunk
        return min(self.limits.max_batch_tokens, chunk * max(1, -(-len(self.waiting) // rows)))

    def _columns(self, prefill: Prefill | None) -> int:
        """Prompt columns for this step's pass: while rows decode, what is left spread evenly
        over as few steps as the prefill's budget allows; else all that is left.

        Even shares, not full chunks and a remainder: a 48-token prompt under a budget of 32
        goes 24 + 24, not 32 + 16.  As many steps either way, so its first token comes as
        soon, but the running rows' slowest step is the smaller share (a step costs about a
        decode step plus a fixed amount per prompt token: the inter-token p99 is set by the
        largest chunk, not by the average)."""
        if prefill is None:
            return 0
        prompts = prefill.prompts
        # A prefill admitted with no row decoding (no budget) completes in its first pass.
        if prefill.budget is None or not self.batch.rows or not self.runner.packs:
            return prompts.remaining
        chunk = max(1, prefill.budget // prompts.rows)
        steps = -(-prompts.remaining // chunk)
        return -(-prompts.remaining // steps)

    def _complete(self, prefill: Prefill, logits: torch.Tensor, step: CoreStep) -> None:
        """The prompts are prefilled: their requests run, their first tokens are drawn into
        ``step``, and their rows join the batch in `finish()`."""
        self._prefill = None
        for req in prefill.requests:  # the head of `waiting` (admit takes from there, in order)
            head = self.waiting.popleft()
            assert head is req
            self.running[req.request_id] = req
        cache = prefill.prompts.cache()
        # Fork: one cache row per unfinished choice (n choices of a fresh request share row i);
        # the rows of requests cancelled during the prefill are left out.
        live = {id(req) for req in prefill.requests}
        owners = [(i, req, choices) for i, (req, choices) in enumerate(prefill.owners) if id(req) in live]
        fork = [i for i, _req, choices in owners for _ in choices]
        if fork != list(range(cache.rows)):  # else (one choice each, none cancelled) nothing moves
            cache.keep(fork)
            logits = logits.index_select(0, torch.tensor(fork, device=logits.device))
        rows = [(req, c) for _i, req, choices in owners for c in choices]
        self._joining = (rows, cache)
        first = self._sample(rows, logits)
        step.tokens += first.tokens
        step.failed += first.failed
        step.admitted = [req.request_id for req in prefill.requests]
        step.prefill_started, step.prefill_s = prefill.started, prefill.spent

    def _drop_from_prefill(self, req: Request) -> None:
        prefill = self._prefill
        if prefill is None or not any(r is req for r in prefill.requests):
            return
        prefill.requests = [r for r in prefill.requests if r is not req]
        if not prefill.requests:  # nobody left to prefill for: its cache goes
            self._prefill = None

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> CoreStep:
        now = time.time()
        failed, logits = self._fail_broken_rows(rows, logits)
        sampled = sample(logits, [self._sampling(req, c) for req, c in rows])
        tokens = []
        for (req, c), s in zip(rows, sampled, strict=True):
            if c.finished:  # its request failed above: leaves the batch
                continue
            c.generated.append(s.token_id)
            tokens.append((req.request_id, c.index, s))
        return CoreStep(tokens, now, failed=failed)

    def _fail_broken_rows(
        self, rows: list[Row], logits: torch.Tensor
    ) -> tuple[list[tuple[str, ErrorInfo]], torch.Tensor]:
        """A request whose logits are not finite (NaN/inf from the model) fails alone; the
        other rows of the batch go on.  Its rows stay in place (finished), so row indices
        and the cache stay aligned until `finish()` keeps the survivors."""
        finite = finite_rows(logits)
        if all(finite):
            return [], logits
        broken = list(dict.fromkeys(rows[i][0].request_id for i, ok in enumerate(finite) if not ok))
        for rid in broken:
            for c in self.running.pop(rid).choices:
                c.finished = True
        # Give finished rows harmless logits so the batch can still be sampled in one go.
        return [(rid, NON_FINITE) for rid in broken], torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)

    def _sampling(self, req: Request, choice: Choice) -> RowSampling:
        cfg = req.config
        return RowSampling(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=req.seed,
            index=choice.index,
            position=len(choice.generated),
            top_logprobs=cfg.top_logprobs if cfg.logprobs else -1,
        )


def finite_rows(logits: torch.Tensor) -> list[bool]:
    """Per row of ``logits`` (rows, vocab): whether every value is finite.

    A row's extremes are finite exactly when all of it is (NaN propagates through both): two
    reductions, ~10x cheaper than an elementwise ``isfinite`` over rows x vocabulary (16 rows of
    SmolLM2's 49k logits: 50 vs 600 us, every step)."""
    return (torch.isfinite(logits.amax(dim=-1)) & torch.isfinite(logits.amin(dim=-1))).tolist()


def _prefill_rows(joined: list[Request]) -> tuple[list[list[int]], list[tuple[Request, list[Choice]]]]:
    prompts: list[list[int]] = []
    owners: list[tuple[Request, list[Choice]]] = []
    for req in joined:
        todo = req.unfinished()
        if any(c.generated for c in req.choices):  # resumed: each choice has its own tail
            for c in todo:
                prompts.append(req.prompt_ids + c.generated)
                owners.append((req, [c]))
        else:
            prompts.append(req.prompt_ids)
            owners.append((req, todo))
    return prompts, owners

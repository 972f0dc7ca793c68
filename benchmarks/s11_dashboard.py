"""Scenario 11: the dashboard (``GET /``) in headless chromium under synthetic traffic.

No worker and no model: a writer thread plays producer and worker for each synthetic request,
writing exactly what they write to Redis, paced evenly: at submit the producer's register
script (meta hash) and ``index.on_queued``; 0.3 s later the lease's ``status running`` and
``index.on_running``; two progress updates (meta ``tokens`` + ``index.on_progress``) at 1 s and
2 s; at 3 s the final ``status``/``tokens`` and ``index.on_finished``.  A synthetic worker's
heartbeat is written every second, so the page has a worker row as it would in production.

Stages: the idle page (the reference), then 1,000 requests/min (the issue's goal), then
5,000/min (to find the limit).  In each stage the page is measured from the inside (Playwright,
Debian's chromium, nothing downloaded):

- frame gaps: a requestAnimationFrame loop (``performance.now()`` between callbacks), p50/p99;
- the requests table's DOM rows (a MutationObserver on its tbody): the maximum seen;
- marker latency: a few requests with known ids; the writer notes ``time.time()`` just before
  the pipeline carrying a marker's ``queued`` event is sent; the observer notes ``Date.now()``
  when ``tr[data-id=...]`` appears (same machine, same wall clock);
- events/s reaching the page: ``window.EventSource`` wrapped by an init script, counting the
  index events in the feed's ``events`` messages (without the app's knowledge);
- long tasks (PerformanceObserver ``longtask``) and the page's JS heap after a forced GC
  (``--enable-precise-memory-info --js-flags=--expose-gc``) at idle and after the stages;
- then, load still on, clicks as a person makes them (mouse down, 100 ms, up) on rows of the
  table: how many opened the request's text.  A click fires only when mousedown and mouseup hit
  the same element, so a table rebuilt under the pointer eats it (before app.js held rebuilds
  back while a button is down and to 4 a second, 3 of 10 clicks landed at 1,000/min).

Everything (chromium, Playwright's driver, the gateway, Redis and the writer) shares 2 cores.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.common import Context, Row, percentile
from benchmarks.s10_gateway import gateway
from producer.register import register_into
from schemas import index, keys
from schemas.config import GenerationConfig
from schemas.job import Job
from schemas.workers import HEARTBEAT_TTL_S, WorkerInfo

NAME = "11 dashboard"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--enable-precise-memory-info",  # otherwise performance.memory is bucketed and cached
    "--js-flags=--expose-gc",  # window.gc(): the heap figures are what the page retains
]
APP_JS = Path(__file__).resolve().parents[1] / "gateway" / "static" / "dashboard" / "app.js"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WORKER = "s11-synthetic-worker"
RATES = (1_000, 5_000)  # requests per minute
GOAL_RATE = 1_000
# A synthetic request's life, seconds after its submit: (what, when).
LIFE = (("running", 0.3), ("progress:1", 1.0), ("progress:2", 2.0), ("finished", 3.0))
EVENTS_PER_REQUEST = 1 + len(LIFE)
MAX_TOKENS = 64
MARKERS = 10  # per stage
CLICKS = 10  # per stage: a row pressed for CLICK_HOLD_S, as a person clicks
CLICK_HOLD_S = 0.1
CLICK_WAIT_S = 0.5  # then: did the page open the request's text (#stream-id)?
GOAL_FRAME_MS = 50.0  # RAIL: work over 50 ms on the main thread delays a click
GOAL_MARKER_MS = 1_000.0  # the feed's tick is 1 s: a new request is on screen within it
GOAL_HEAP_MB = 10.0  # the page keeps a bounded window (MAX_REQUESTS) of small objects


def window_constants() -> tuple[int, int]:
    """(rows rendered, requests kept) as app.js defines them."""
    text = APP_JS.read_text()

    def const(name: str) -> int:
        m = re.search(rf"const {name} = (\d+)", text)
        if not m:
            raise RuntimeError(f"{name} not found in {APP_JS}")
        return int(m.group(1))

    return const("ROWS_SHOWN"), const("MAX_REQUESTS")


# -- the writer ----------------------------------------------------------------------------


@dataclass
class Stage:
    rate_per_min: int
    started: float = 0.0
    ended: float = 0.0
    requests: int = 0
    events: int = 0
    late_s: list[float] = field(default_factory=list)  # how late each write went out
    marker_ids: list[str] = field(default_factory=list)
    marker_sent: dict[str, float] = field(default_factory=dict)  # id -> unix s before the write


class Writer(threading.Thread):
    """Plays producer + worker for every synthetic request, and a worker's heartbeat."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="s11-writer")
        self.client = redis.Redis.from_url(url)
        self.config = GenerationConfig(max_tokens=MAX_TOKENS)
        self.lock = threading.Lock()
        self.due: list[tuple[float, int, str, str, int]] = []  # (when, seq, request id, what, stage)
        self.seq = 0
        self.stages: list[Stage] = []
        self.in_flight = 0
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.next_beat = 0.0

    def plan(self, rate_per_min: int, duration_s: float, measured_s: float) -> Stage:
        """Requests at an even pace from now for ``duration_s``; MARKERS of those in the first
        ``measured_s`` are markers."""
        stage = Stage(rate_per_min, started=time.time())
        number = len(self.stages)
        count = int(rate_per_min * duration_s / 60)
        interval = 60.0 / rate_per_min
        measured = int(rate_per_min * measured_s / 60)
        marked = {int((k + 0.5) * measured / MARKERS) for k in range(MARKERS)}
        with self.lock:
            self.stages.append(stage)
            for i in range(count):
                rid = f"s11-mark-{number}-{i:06d}" if i in marked else f"s11-{number}-{i:06d}"
                if i in marked:
                    stage.marker_ids.append(rid)
                self._push(stage.started + i * interval, rid, "queued", number)
        stage.ended = stage.started + count * interval
        return stage

    def idle(self) -> bool:
        with self.lock:
            return not self.due

    def _push(self, when: float, rid: str, what: str, stage: int) -> None:
        self.seq += 1
        heapq.heappush(self.due, (when, self.seq, rid, what, stage))

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                now = time.time()
                if now >= self.next_beat:
                    self._beat(now)
                    self.next_beat = now + 1.0
                with self.lock:
                    batch = []
                    while self.due and self.due[0][0] <= now:
                        batch.append(heapq.heappop(self.due))
                    wake = self.due[0][0] if self.due else now + 0.05
                if batch:
                    self._write(batch)
                self.stop_flag.wait(max(0.0, min(wake, self.next_beat) - time.time()))
        except BaseException as exc:  # reported by the scenario (a dead writer means no load)
            self.error = exc

    def _write(self, batch: list[tuple[float, int, str, str, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        marks: list[tuple[Stage, str]] = []
        now = time.time()
        for when, _, rid, what, number in batch:
            stage = self.stages[number]
            stage.late_s.append(now - when)
            stage.events += 1
            meta = keys.meta_key(rid)
            if what == "queued":
                job = Job(request_id=rid, config=self.config, submitted_at=now, prompt=_prompt(rid), model=MODEL,
                          ttl_s=600)  # fmt: skip
                register_into(pipe, job)
                commands = index.on_queued(job, now=now)
                stage.requests += 1
                self.in_flight += 1
                if rid in stage.marker_ids:
                    marks.append((stage, rid))
                with self.lock:
                    for step, after in LIFE:
                        self._push(when + after, rid, step, number)
            elif what == "running":
                pipe.hset(meta, mapping={"status": "running", "worker": WORKER})
                commands = index.on_running(rid, WORKER, MODEL, None, 1, now=now)
            elif what.startswith("progress"):
                tokens = MAX_TOKENS * int(what.split(":")[1]) // 3
                pipe.hset(meta, "tokens", tokens)
                commands = index.on_progress(rid, tokens, ttft_s=0.05, tokens_per_s=32.0, now=now)
            else:
                pipe.hset(meta, mapping={"status": "finished", "tokens": MAX_TOKENS})
                usage = {"prompt_tokens": 12, "completion_tokens": MAX_TOKENS, "ttft_s": 0.05,
                         "decode_tokens_per_s": 32.0, "queue_s": 0.3, "e2e_s": 3.0}  # fmt: skip
                commands = index.on_finished(rid, "finished", usage, None, "length", MAX_TOKENS, now=now)
                self.in_flight -= 1
            for command in commands:
                pipe.execute_command(*command)
        sent = time.time()
        for stage, rid in marks:
            stage.marker_sent[rid] = sent
        pipe.execute()

    def _beat(self, now: float) -> None:
        info = WorkerInfo(WORKER, MODEL, capacity=256, running=self.in_flight, tokens_per_s=32.0 * self.in_flight,
                          hostname="bench", pid=0, started_at=now, heartbeat_at=now)  # fmt: skip
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.worker_key(WORKER), mapping=info.to_mapping())  # type: ignore[arg-type]
        pipe.expire(keys.worker_key(WORKER), HEARTBEAT_TTL_S)
        pipe.zadd(keys.WORKERS_KEY, {WORKER: int(now * 1000)})
        pipe.execute()

    def close(self) -> None:
        self.stop_flag.set()
        self.join(10)
        self.client.delete(keys.worker_key(WORKER))
        self.client.zrem(keys.WORKERS_KEY, WORKER)
        self.client.close()


def _prompt(rid: str) -> str:
    return f"Synthetic request {rid}: write a short poem about the sea and the lighthouse keeper."


# -- the page ------------------------------------------------------------------------------

# Before the app's script runs: count what the feed brings, and the long tasks.
INIT_SCRIPT = """
(() => {
  const stats = (window.__s11 = { messages: 0, events: 0, bytes: 0, longtasks: 0, longtaskMs: 0 });
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, opts) {
      super(url, opts);
      if (!String(url).includes("/v1/dashboard/events")) return;
      for (const type of ["snapshot", "events", "tick"]) {
        this.addEventListener(type, (m) => {
          stats.messages++; stats.bytes += m.data.length;
          if (type !== "events") return;
          let n = 0, i = -1;
          while ((i = m.data.indexOf('"s":"', i + 1)) !== -1) n++;
          stats.events += n;
        });
      }
    }
  };
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) { stats.longtasks++; stats.longtaskMs += e.duration; }
    }).observe({ type: "longtask", buffered: true });
  } catch (e) {}
})();
"""

# A MutationObserver on the requests table: rows seen (max) and when each marker appeared.
OBSERVE = """
(ids) => {
  if (window.__s11obs) window.__s11obs.disconnect();
  const tbody = document.querySelector("#requests tbody");
  const seen = (window.__s11marks = {});
  const all = () => document.getElementsByTagName("tr").length;
  const rows = (window.__s11rows = { max: tbody.childElementCount, maxAll: all(), renders: 0 });
  const pending = new Set(ids);
  const obs = new MutationObserver(() => {
    const n = tbody.childElementCount;
    rows.renders++;
    if (n > rows.max) rows.max = n;
    rows.maxAll = Math.max(rows.maxAll, all());
    for (const id of pending) {
      if (tbody.querySelector(`tr[data-id="${id}"]`)) { seen[id] = Date.now(); pending.delete(id); }
    }
  });
  obs.observe(tbody, { childList: true });
  window.__s11obs = obs;
}
"""

FRAMES = """
(ms) => new Promise((resolve) => {
  const gaps = [];
  let last = null;
  const end = performance.now() + ms;
  const frame = () => {
    const now = performance.now();
    if (last !== null) gaps.push(now - last);
    last = now;
    if (now < end) requestAnimationFrame(frame); else resolve(gaps);
  };
  requestAnimationFrame(frame);
})
"""

HEAP = "() => { window.gc(); return performance.memory.usedJSHeapSize; }"
STATS = "() => ({ ...window.__s11, marks: window.__s11marks || {}, rows: window.__s11rows || {}, " \
    "shown: document.querySelector('#shown').textContent })"  # fmt: skip


@dataclass
class Measured:
    label: str
    gaps_ms: list[float]
    rows_max: int
    all_rows_max: int
    renders_per_s: float
    shown: str
    events_per_s: float
    written_per_s: float
    marker_ms: list[float]
    markers_missed: int
    longtask_ms: float
    longtasks: int
    browser_cpu_s: float
    renderer_cpu_s: float
    gateway_cpu_s: float
    seconds: float
    stage: Stage | None = None
    clicks_landed: int = 0


def click_rows(page: Any, count: int) -> int:
    """Press and release a row in the requests table ``count`` times; how many clicks opened a
    request's text.  The row under the pointer is whichever is there: a click counts when the
    page's click handler ran at all (the table may be rebuilt between mousedown and mouseup)."""
    landed = 0
    for k in range(count):
        cell = page.locator(f"#requests tbody tr:nth-child({3 + k % 5}) td:nth-child(2)")
        box = None
        for _ in range(50):  # None when the table was rebuilt under the look-up: look again
            box = cell.bounding_box(timeout=5_000)
            if box is not None:
                break
        if box is None:
            raise RuntimeError("no row to click in the requests table")
        page.evaluate("() => { document.querySelector('#stream-id').textContent = ''; }")
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.wait_for_timeout(CLICK_HOLD_S * 1000)
        page.mouse.up()
        page.wait_for_timeout(CLICK_WAIT_S * 1000)
        landed += bool(page.evaluate("() => document.querySelector('#stream-id').textContent"))
    return landed


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _browser_procs() -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(all chromium processes under this one, the renderers among them)."""
    everyone, renderers = [], []
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name():
                everyone.append(p)
                if "--type=renderer" in p.cmdline():
                    renderers.append(p)
        except psutil.Error:
            pass
    return everyone, renderers


def measure(page: Any, seconds: float, label: str, gw: psutil.Process, stage: Stage | None = None) -> Measured:
    """Frame gaps for ``seconds`` while the writer runs its plan (if any)."""
    page.evaluate(OBSERVE, stage.marker_ids if stage else [])
    before = page.evaluate(STATS)
    browser, renderers = _browser_procs()
    cpu0, r0, gw0, t0 = _cpu(browser), _cpu(renderers), _cpu([gw]), time.perf_counter()
    gaps = page.evaluate(FRAMES, seconds * 1000)
    elapsed = time.perf_counter() - t0
    cpu1, r1, gw1 = _cpu(browser), _cpu(renderers), _cpu([gw])
    after = page.evaluate(STATS)
    written = 0.0
    marker_ms: list[float] = []
    missed = 0
    if stage is not None:
        written = stage.events / max(1e-9, min(time.time(), stage.ended + LIFE[-1][1]) - stage.started)
        for rid in stage.marker_ids:
            sent, seen = stage.marker_sent.get(rid), after["marks"].get(rid)
            if sent is None or seen is None:
                missed += 1
            else:
                marker_ms.append(seen - sent * 1000)
    return Measured(
        label=label,
        gaps_ms=list(gaps),
        rows_max=int(after["rows"].get("max", 0)),
        all_rows_max=int(after["rows"].get("maxAll", 0)),
        renders_per_s=int(after["rows"].get("renders", 0)) / elapsed,
        shown=str(after["shown"]),
        events_per_s=(after["events"] - before["events"]) / elapsed,
        written_per_s=written,
        marker_ms=marker_ms,
        markers_missed=missed,
        longtask_ms=after["longtaskMs"] - before["longtaskMs"],
        longtasks=after["longtasks"] - before["longtasks"],
        browser_cpu_s=cpu1 - cpu0,
        renderer_cpu_s=r1 - r0,
        gateway_cpu_s=gw1 - gw0,
        seconds=elapsed,
        stage=stage,
    )


# -- the scenario --------------------------------------------------------------------------


def run(ctx: Context) -> list[Row]:
    ctx.stop_worker()  # no model here: the cores go to chromium, the gateway and the writer
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        return [Row(NAME, "SKIPPED", None, note=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")]
    idle_s, stage_s = (5.0, 10.0) if ctx.quick else (20.0, 45.0)
    writer = Writer(ctx.url)
    with gateway(ctx.url) as (base, gw), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(INIT_SCRIPT)
            writer.start()  # the worker's heartbeat from now on
            page.goto(base + "/")
            page.wait_for_selector("#conn.live", timeout=20_000)
            page.wait_for_selector("#workers tbody tr", timeout=20_000)
            time.sleep(1.0)  # the snapshot rendered, the first ticks in
            heap_idle = page.evaluate(HEAP)
            results = [measure(page, idle_s, "idle", gw)]
            heaps = []
            for rate in RATES:
                click_s = CLICKS * (CLICK_HOLD_S + CLICK_WAIT_S) + 5
                stage = writer.plan(rate, stage_s + click_s, stage_s)
                results.append(measure(page, stage_s, f"{rate:,} req/min", gw, stage))
                results[-1].clicks_landed = click_rows(page, CLICKS)
                deadline = time.time() + 30
                while not writer.idle() and time.time() < deadline:  # in-flight requests end
                    time.sleep(0.2)
                time.sleep(1.5)  # the last events reach the page
                heaps.append(page.evaluate(HEAP))
                if writer.error is not None:
                    raise RuntimeError(f"the writer failed: {writer.error!r}")
        finally:
            browser.close()
            writer.close()
    return rows(results, heap_idle, heaps)


def rows(results: list[Measured], heap_idle: float, heaps: list[float]) -> list[Row]:
    rows_shown, kept = window_constants()
    idle = results[0]
    idle_p50, idle_p99 = percentile(idle.gaps_ms, 50), percentile(idle.gaps_ms, 99)
    out: list[Row] = []
    for m in results[1:]:
        assert m.stage is not None
        goal = m.stage.rate_per_min == GOAL_RATE
        p50, p99 = percentile(m.gaps_ms, 50), percentile(m.gaps_ms, 99)
        load = (
            f"{m.stage.requests} requests written in {m.stage.ended - m.stage.started:.0f} s (frames over the first "
            f"{m.seconds:.0f} s, then the clicks); writes late by p99 "
            f"{percentile(m.stage.late_s, 99) * 1000:.0f} ms; CPU: {_cpu_line(m)} (idle: {_cpu_line(idle)})"
        )
        out.append(
            Row(NAME, f"frame gap p50, {m.label}", p50, idle_p50, "ms", ref_label="idle page",
                note=f"{len(m.gaps_ms)} frames ({len(idle.gaps_ms)} idle); {load}")
        )  # fmt: skip
        out.append(
            Row(NAME, f"frame gap p99, {m.label}", p99, idle_p99, "ms", f"p99 <= {GOAL_FRAME_MS:g} ms",
                p99 <= GOAL_FRAME_MS if goal else None, ref_label="idle page",
                note=f"max {max(m.gaps_ms, default=float('nan')):.0f} ms; long tasks: {m.longtasks}, "
                f"{m.longtask_ms:.0f} ms in all (idle: {idle.longtasks}, {idle.longtask_ms:.0f} ms)"
                + ("" if goal else "; the stress stage: informational"))
        )  # fmt: skip
        out.append(
            Row(NAME, f"DOM rows max, {m.label}", m.rows_max, idle.rows_max, "rows", f"<= {rows_shown} (ROWS_SHOWN)",
                m.rows_max <= rows_shown, ref_label="idle page",
                note=f"the table was rebuilt {m.renders_per_s:.0f} times/s (idle: {idle.renders_per_s:.1f}); "
                f"all <tr> on the page max {m.all_rows_max}; at the end the header says {m.shown.strip()} "
                f"(kept in memory <= MAX_REQUESTS = {kept})")
        )  # fmt: skip
        lat = m.marker_ms
        miss = f"; {m.markers_missed} of {len(m.stage.marker_ids)} markers never seen" if m.markers_missed else ""
        out.append(
            Row(NAME, f"marker latency p50, {m.label}", percentile(lat, 50), None, "ms",
                note=f"{len(lat)} markers: queued event written -> its row in the DOM (Date.now()){miss}")
        )  # fmt: skip
        out.append(
            Row(NAME, f"marker latency p99, {m.label}", percentile(lat, 99), None, "ms",
                f"p99 <= {GOAL_MARKER_MS:g} ms", (percentile(lat, 99) <= GOAL_MARKER_MS and not m.markers_missed)
                if goal else None, note=f"max {max(lat, default=float('nan')):.0f} ms{miss}")
        )  # fmt: skip
        out.append(
            Row(NAME, f"clicks that open a request, {m.label}", 100 * m.clicks_landed / CLICKS, None, "%",
                "100 %", m.clicks_landed == CLICKS if goal else None,
                note=f"{m.clicks_landed} of {CLICKS} presses of {CLICK_HOLD_S * 1000:.0f} ms on a row opened its text")
        )  # fmt: skip
        out.append(
            Row(NAME, f"events/s at the page, {m.label}", m.events_per_s, m.written_per_s, "ev/s",
                ref_label="written to Redis",
                note="index events in the feed's `events` messages; the feed also re-sends each followed "
                "request's meta state once a tick, so the page may see more than was written")
        )  # fmt: skip
    mb = 1e6
    growth = (heaps[-1] - heap_idle) / mb
    out.append(
        Row(NAME, "JS heap after GC, after the stages", heaps[-1] / mb, heap_idle / mb, "MB",
            f"growth {growth:+.1f} <= {GOAL_HEAP_MB:g} MB", growth <= GOAL_HEAP_MB, ref_label="idle page",
            note="after " + ", ".join(f"{r.label}: {h / mb:.1f} MB" for r, h in zip(results[1:], heaps, strict=True))
            + f"; the page keeps <= {kept} requests")
    )  # fmt: skip
    return out


def _cpu_line(m: Measured) -> str:
    pct = [100 * x / m.seconds for x in (m.browser_cpu_s, m.renderer_cpu_s, m.gateway_cpu_s)]
    return f"chromium {pct[0]:.0f} % (its renderer {pct[1]:.0f} %), gateway {pct[2]:.0f} %"


def main() -> None:
    from benchmarks.common import format_table
    from cli.embedded import embedded_redis

    with embedded_redis() as url:
        ctx = Context(quick=True, url=url)
        print(format_table(run(ctx)))


if __name__ == "__main__":
    main()

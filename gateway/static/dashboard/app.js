// tokenrelay dashboard: one SSE feed (/v1/dashboard/events), state folded by request id,
// a bounded window of rows, rebuilt at most every RENDER_MS (never while a button is held).
"use strict";

const MAX_REQUESTS = 500;   // kept in memory (oldest ended ones dropped first)
const ROWS_SHOWN = 100;     // rendered
const CHART_POINTS = 120;   // one a second: two minutes
const RENDER_MS = 250;      // the tables are rebuilt at most 4 times a second, however busy the feed
const RANK = { queued: 0, running: 1, progress: 1, cancelling: 2, finished: 3, cancelled: 3, failed: 3 };
const ENDED = new Set(["finished", "cancelled", "failed"]);

const requests = new Map();  // id -> folded state (schemas/index.py's fold, in JS)
let workers = [], batches = [], counts = { queued: 0, running: 0 }, tps = 0;
const history = { tps: [], queue: [] };
let dirty = false, selected = null, textSource = null, rendered = -Infinity;
// A click fires only if mousedown and mouseup hit the same element: no rebuild while a button
// is held (for a second at most, should the release never reach the page).
let pressed = -Infinity;
document.addEventListener("pointerdown", () => { pressed = performance.now(); }, true);
for (const type of ["pointerup", "pointercancel"]) document.addEventListener(type, () => { pressed = -Infinity; }, true);

// With TOKENRELAY_API_KEYS set, every call needs a key.  It comes from the page's fragment
// (#key=...: never sent to the server as part of the page's URL, and wiped from the address bar)
// or from the form the page shows on a 401, and is kept for this tab only.  fetch sends it as a
// bearer token; EventSource cannot send headers, so its URLs carry ?api_key=.
const KEY_STORE = "tokenrelay-api-key";
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
const keyed = (url) => (apiKey ? `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(apiKey)}` : url);
const call = (url, opts = {}) => fetch(url, { ...opts, headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const num = (x, d = 0) => (x == null ? "" : Number(x).toFixed(d));
const age = (t) => (t ? `${Math.max(0, Math.round(Date.now() / 1000 - t))}s` : "");

function fold(ev) {
  if (!ev.id) return;  // batch events: progress comes with the tick
  const old = requests.get(ev.id) || { id: ev.id, first: ev.t };
  const { s, ...fields } = ev;
  let next;
  if (old.s === undefined || (RANK[s] ?? 0) >= (RANK[old.s] ?? 0)) {
    next = { ...old, ...fields, s: s === "progress" ? "running" : s };
  } else {
    next = { ...fields, ...old };  // a late event only fills gaps
  }
  if (next.usage) {
    next.ttft_s ??= next.usage.ttft_s;
    next.tps ??= next.usage.decode_tokens_per_s;
    next.tokens ??= next.usage.completion_tokens;
  }
  requests.delete(ev.id);  // re-insert: Map order = last change
  requests.set(ev.id, next);
  dirty = true;
}

function trim() {
  if (requests.size <= MAX_REQUESTS) return;
  for (const [id, r] of requests) {  // oldest change first
    if (requests.size <= MAX_REQUESTS) break;
    if (ENDED.has(r.s) && id !== selected) requests.delete(id);
  }
  while (requests.size > MAX_REQUESTS) requests.delete(requests.keys().next().value);
}

function onTick(d) {
  workers = d.workers || []; batches = d.batches || []; counts = d.counts || counts; tps = d.tokens_per_s || 0;
  push(history.tps, tps); push(history.queue, counts.queued);
  dirty = true;
}

function push(list, v) { list.push(v); if (list.length > CHART_POINTS) list.shift(); }

function keyFromFragment() {
  const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (!m) return;
  apiKey = decodeURIComponent(m[1]);
  sessionStorage.setItem(KEY_STORE, apiKey);
  window.history.replaceState(null, "", location.pathname + location.search);  // `history` is the charts' here
}

async function start() {
  // One plain request first: an EventSource cannot tell a 401 from a dropped connection.
  const probe = await call("/v1/dashboard/events");
  if (probe.body) probe.body.cancel();
  if (probe.status === 401) {
    $("#conn").textContent = apiKey ? "wrong API key" : "API key needed"; $("#conn").className = "pill";
    $("#key-form").hidden = false; $("#key").focus();
    return;
  }
  $("#key-form").hidden = true;
  connect();
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("#key").value.trim();
  sessionStorage.setItem(KEY_STORE, apiKey);
  start();
});

function connect() {
  const source = new EventSource(keyed("/v1/dashboard/events"));
  source.addEventListener("snapshot", (m) => {
    const d = JSON.parse(m.data);
    requests.clear();
    for (const a of d.active || []) fold({ id: a.request_id, s: a.status, t: a.since, model: a.model, worker: a.worker, tokens: a.tokens });
    for (const ev of d.events || []) fold(ev);
    onTick(d); trim();
  });
  source.addEventListener("events", (m) => { for (const ev of JSON.parse(m.data)) fold(ev); trim(); });
  source.addEventListener("tick", (m) => onTick(JSON.parse(m.data)));
  source.onopen = () => { $("#conn").textContent = "live"; $("#conn").className = "pill live"; };
  source.onerror = () => { $("#conn").textContent = "reconnecting"; $("#conn").className = "pill"; };
}

function renderRequests() {
  const rows = [...requests.values()].reverse();
  rows.sort((a, b) => (ENDED.has(a.s) - ENDED.has(b.s)));  // stable: active first, newest first
  const shown = rows.slice(0, ROWS_SHOWN);
  $("#shown").textContent = `(${shown.length} of ${requests.size})`;
  $("#requests tbody").innerHTML = shown.map((r) => `
    <tr data-id="${esc(r.id)}" class="${r.id === selected ? "selected" : ""}">
      <td><code>${esc(r.id.slice(0, 12))}</code></td><td class="status ${esc(r.s)}">${esc(r.s)}</td>
      <td>${esc((r.model || workerModel(r.worker)).split("/").pop())}</td><td>${esc(r.worker || "")}</td>
      <td>${num(r.tokens)}</td><td>${num(r.tps, 1)}</td><td>${r.ttft_s == null ? "" : num(r.ttft_s * 1000) + " ms"}</td>
      <td>${esc(r.finish_reason || "")}</td><td>${age(r.first)}</td>
      <td>${ENDED.has(r.s) ? "" : `<button data-cancel="${esc(r.id)}">cancel</button>`}</td>
    </tr>`).join("");
}

// A request sent without a model runs on the default one: show what its worker serves.
function workerModel(id) {
  const w = workers.find((x) => x.worker_id === id);
  return w ? w.model : "";
}

function renderBatches() {
  $("#batches tbody").innerHTML = batches.map((b) => {
    const pct = b.total ? Math.floor((100 * b.finished) / b.total) : 0;
    const live = !b.complete && b.status !== "cancelled";
    // status is what the producer did (submitted, cancelled, ...): say when every item ended
    const status = b.complete && b.status === "submitted" ? "completed" : b.status;
    return `<tr data-batch="${esc(b.id)}"><td><code>${esc(b.id.slice(0, 18))}</code></td><td>${esc(status)}</td>
      <td><div class="bar"><i style="width:${pct}%"></i><span class="pct">${b.finished} / ${b.total} (${pct} %)</span></div></td>
      <td>${num(b.tokens)}</td><td>${live ? `<button data-cancel-batch="${esc(b.id)}">cancel</button>` : ""}</td></tr>`;
  }).join("");
}

function renderWorkers() {
  $("#workers tbody").innerHTML = workers.map((w) => `
    <tr><td>${esc(w.worker_id)}${w.draining ? " (draining)" : ""}</td><td>${esc(w.model.split("/").pop())} <small>(${esc(w.engine || "builtin")})</small></td>
    <td>${w.running} / ${w.capacity}</td><td>${num(w.tokens_per_s, 1)}</td><td>${age(w.heartbeat_at)} ago</td></tr>`).join("");
}

function chart(canvas, values, color) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...values);
  g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (CHART_POINTS - 1)) * w, y = h - 4 - (v / max) * (h - 14);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#8a96a3"; g.font = "10px sans-serif"; g.fillText(num(max, 0), 2, 10);
}

function render(now) {
  if (dirty && now - rendered >= RENDER_MS && now - pressed > 1000) {
    dirty = false; rendered = now;
    $("#tps").textContent = num(tps, 1); $("#queued").textContent = counts.queued; $("#running").textContent = counts.running;
    renderRequests(); renderBatches(); renderWorkers();
    chart($("#chart-tps"), history.tps, "#4fa3ff"); chart($("#chart-queue"), history.queue, "#d29922");
  }
  requestAnimationFrame(render);
}

function watch(id) {
  if (textSource) textSource.close();
  selected = id; dirty = true;
  $("#stream").hidden = false; $("#stream-id").textContent = id; $("#stream-text").textContent = "";
  const status = $("#stream-status");
  status.textContent = "streaming"; status.className = "status running";
  const texts = [];
  textSource = new EventSource(keyed(`/v1/dashboard/requests/${encodeURIComponent(id)}/stream`));
  textSource.addEventListener("record", (m) => {
    const r = JSON.parse(m.data);
    texts[r.index] = (texts[r.index] || "") + r.text;
    $("#stream-text").textContent = texts.length > 1 ? texts.map((t, i) => `[${i}] ${t || ""}`).join("\n\n") : texts[0];
    if (r.usage) {
      const reasons = r.finish_reason || "";
      const s = reasons === "cancelled" ? "cancelled" : reasons === "error" || r.error ? "failed" : "finished";
      status.textContent = s; status.className = `status ${s}`;
    }
  });
  textSource.addEventListener("failure", (m) => { status.textContent = JSON.parse(m.data).message; status.className = "status failed"; });
  textSource.addEventListener("end", () => textSource.close());
}

document.addEventListener("click", async (e) => {
  const t = e.target;
  if (t.dataset.cancel) { e.stopPropagation(); await call(`/v1/dashboard/requests/${encodeURIComponent(t.dataset.cancel)}/cancel`, { method: "POST" }); return; }
  if (t.dataset.cancelBatch) { await call(`/v1/batches/${encodeURIComponent(t.dataset.cancelBatch)}/cancel`, { method: "POST" }); return; }
  const row = t.closest("#requests tbody tr");
  if (row) watch(row.dataset.id);
});

keyFromFragment();
start();
requestAnimationFrame(render);

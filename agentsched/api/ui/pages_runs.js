/* Pages about runs: Overview, Executions (the history) and one execution's detail. */
"use strict";

const STATUSES = ["queued", "running", "success", "failed", "cancelled"];

/* ---- Overview -------------------------------------------------------------------- */
function overviewPage() {
  let timer = null;
  let lastLoad = 0;
  let main = null;
  async function load() {
    lastLoad = Date.now();
    const o = await api("GET", "overview?minutes=60");
    const to = Date.now(), from = to - 60 * 60000;
    const at = (m) => new Date(m.start).getTime() + 30000;
    const pick = (key) => o.minutes.map((m) => [at(m), m[key]]);
    // Counts are 0 in a minute the server left out (nothing ended then); percentiles are absent.
    const byMinute = new Map(o.minutes.map((m) => [Math.floor(new Date(m.start).getTime() / 60000), m]));
    const count = (key) => {
      const out = [];
      for (let t = Math.ceil(from / 60000); t * 60000 <= to; t++) {
        const m = byMinute.get(t);
        out.push([t * 60000 + 30000, m ? m[key] : 0]);
      }
      return out;
    };
    const card = (label, value) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-metric": label }, value));
    const body = h("div", {},
      h("h1", {}, `Overview of ${o.app}`),
      h("section", { class: "cards", "aria-label": "Right now" },
        card("Queued", o.queued), card("Deferred", o.deferred), card("Running", o.running), card("Workers alive", o.workers_alive)),
      h("section", { class: "charts", "aria-label": "The last hour, per minute" },
        lineChart("Throughput", [{ name: "ended", values: count("finished") }], from, to, "per min"),
        lineChart("Failures", [{ name: "failed", values: count("failed") }], from, to, "per min"),
        lineChart("Run time", [{ name: "p50", values: pick("runtime_p50_ms") }, { name: "p95", values: pick("runtime_p95_ms") }], from, to, "ms"),
        lineChart("Pickup delay", [{ name: "p50", values: pick("pickup_p50_ms") }, { name: "p95", values: pick("pickup_p95_ms") }], from, to, "ms")));
    main.replaceChildren(body);
  }
  return {
    async render(el) { main = el; await load(); timer = setInterval(() => load().catch(() => {}), 5000); },
    onEvents() { if (Date.now() - lastLoad > 1000) load().catch(() => {}); },
    stop() { clearInterval(timer); },
  };
}

/* ---- Executions ------------------------------------------------------------------ */
const historyState = { status: "", fn: "", since: "", until: "", idPrefix: "", cursors: [null], page: 0 };

function progressCell(e) {
  if (e.progress === null || e.progress === undefined) return "";
  const pct = Math.round(e.progress * 100);
  return h("span", {}, h("progress", { max: "100", value: String(pct), "aria-label": `Progress of ${e.id.slice(0, 8)}` }), ` ${pct}%`);
}

function executionsPage() {
  let main = null, tbody = null, rows = new Map(), refresh = null, tries = 0;
  // Executions seen on the bus but not yet in the history (the recorder writes SQL a
  // moment after the event): their latest event, applied once a reload shows them.
  const unseen = new Map();
  function update(tr, p) {
    if (p.status) tr.querySelector(".status").replaceChildren(statusBadge(p.status));
    if (p.attempt) tr.querySelector(".attempt").textContent = p.attempt;
    if (p.progress !== undefined && p.progress !== null) tr.querySelector(".progress").replaceChildren(progressCell({ id: p.execution_id, progress: p.progress }));
  }
  // One reload per 500 ms at most; while some are still missing, up to 10 more.
  function later() {
    if (refresh) return;
    refresh = setTimeout(async () => {
      try { await load(); } catch (err) { /* the next event or retry tries again */ }
      refresh = null;
      for (const [id, p] of unseen) {
        const tr = rows.get(id);
        if (tr) { update(tr, p); unseen.delete(id); }
      }
      if (unseen.size && ++tries <= 10) later();
      else { unseen.clear(); tries = 0; }
    }, 500);
  }
  async function load() {
    const s = historyState;
    const q = new URLSearchParams({ limit: "50" });
    if (s.status) q.append("status", s.status);
    if (s.fn) q.set("function", s.fn);
    if (s.since) q.set("since", new Date(s.since).toISOString());
    if (s.until) q.set("until", new Date(s.until).toISOString());
    if (s.idPrefix) q.set("id_prefix", s.idPrefix);
    if (s.cursors[s.page]) q.set("cursor", s.cursors[s.page]);
    const result = await api("GET", "executions?" + q);
    s.cursors[s.page + 1] = result.next_cursor;
    rows = new Map();
    const trs = result.items.map((e) => {
      const tr = h("tr", { "data-id": e.id },
        h("td", {}, h("a", { href: `#/executions/${e.id}`, class: "mono" }, e.id.slice(0, 8))),
        h("td", { class: "mono" }, e.function),
        h("td", { class: "status" }, statusBadge(e.status)),
        h("td", { class: "attempt" }, e.attempt),
        h("td", {}, when(e.enqueued_at)),
        h("td", {}, when(e.finished_at)),
        h("td", { class: "progress" }, progressCell(e)));
      rows.set(e.id, tr);
      return tr;
    });
    tbody.replaceChildren(...trs);
    document.getElementById("history-count").textContent =
      `${result.total} execution${result.total === 1 ? "" : "s"}, page ${s.page + 1}`;
    document.getElementById("newer").disabled = s.page === 0;
    document.getElementById("older").disabled = !result.next_cursor;
  }
  function filters() {
    const s = historyState;
    const field = (label, input) => h("div", { class: "field" }, h("label", { for: input.id }, label), input);
    const status = h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "any"), STATUSES.map((x) => h("option", { value: x, selected: s.status === x }, x)));
    const fn = h("input", { id: "f-function", name: "function", value: s.fn, list: "functions", autocomplete: "off" });
    const since = h("input", { id: "f-since", type: "datetime-local", value: s.since });
    const until = h("input", { id: "f-until", type: "datetime-local", value: s.until });
    const idp = h("input", { id: "f-id", type: "search", value: s.idPrefix, autocomplete: "off" });
    const list = h("datalist", { id: "functions" });
    api("GET", "functions").then((f) => list.replaceChildren(...f.items.map((x) => h("option", { value: x.name })))).catch(() => {});
    return h("form", { class: "filters", role: "search", "aria-label": "Filter executions",
      onsubmit: (ev) => {
        ev.preventDefault();
        Object.assign(s, { status: status.value, fn: fn.value.trim(), since: since.value, until: until.value, idPrefix: idp.value.trim(), cursors: [null], page: 0 });
        load().catch((err) => say(errorText(err), true));
      } },
      field("Status", status), field("Function", fn), field("Enqueued since", since), field("Enqueued before", until), field("Id starts with", idp), list,
      h("button", { type: "submit" }, "Apply filters"));
  }
  return {
    async render(el) {
      main = el;
      tbody = h("tbody", {});
      const tableEl = table("Executions, newest first", ["Id", "Function", "Status", "Attempt", "Enqueued", "Finished", "Progress"], []);
      tableEl.querySelector("table").replaceChild(tbody, tableEl.querySelector("tbody"));
      main.replaceChildren(h("h1", {}, "Executions"), filters(),
        h("p", { id: "history-count", role: "status" }), tableEl,
        h("div", { class: "pager" },
          h("button", { id: "newer", type: "button", onclick: () => { historyState.page -= 1; load(); } }, "Newer"),
          h("button", { id: "older", type: "button", onclick: () => { historyState.page += 1; load(); } }, "Older")));
      await load();
    },
    onEvents(batch) {
      for (const ev of batch) {
        const p = ev.payload || {};
        if (!p.execution_id) continue;
        const tr = rows.get(p.execution_id);
        if (tr) {
          update(tr, p);
        } else if (historyState.page === 0 && (ev.event_type === "task.queued" || unseen.has(p.execution_id))) {
          unseen.set(p.execution_id, { ...(unseen.get(p.execution_id) || {}), ...p });
        }
      }
      if (unseen.size) later();
    },
    stop() { clearTimeout(refresh); },
  };
}

/* ---- One execution --------------------------------------------------------------- */
// A run's lifecycle comes from its record (queued, started, its ending), loaded with it,
// and for a live run from the events of the shell's stream since the page opened. Never
// a replay of the bus: for an old run, that streamed everything published since.
const ENDINGS = { success: "task.completed", failed: "task.failed", cancelled: "task.cancelled" };
const RECORDED = new Set(["task.queued", "task.started", ...Object.values(ENDINGS)]);

function lifecycleOf(e, seen) {
  const recorded = [["task.queued", e.enqueued_at], ["task.started", e.started_at], [ENDINGS[e.status], e.finished_at]]
    .filter(([type, at]) => type && at)
    .map(([type, at]) => ({ event_type: type, created_at: at, payload: {} }));
  const more = seen.filter((ev) => !RECORDED.has(ev.event_type)); // progress, retrying
  return [...recorded, ...more].sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
}

function executionPage() {
  let main = null, content = null, id = null, pending = null;
  const seen = []; // this run's events on the live stream
  async function act(label, path) {
    try {
      const e = await api("POST", `executions/${id}/${path}`);
      if (e.id !== id) { location.hash = `#/executions/${e.id}`; return; }
      say(`${label}: ${e.status}`);
      await load();
    } catch (err) { say(errorText(err), true); }
  }
  function actions(e) {
    const live = e.status === "queued" || e.status === "running";
    return h("div", { class: "actions" },
      live && h("button", { type: "button", onclick: () => act("Cancel", "cancel") }, "Cancel"),
      (e.status === "failed" || e.status === "cancelled") && h("button", { type: "button", onclick: () => act("Retry", "retry") }, "Retry"),
      h("button", { type: "button", onclick: () => act("Run again", "run-again") }, "Run again"));
  }
  function field(name, value) { return [h("dt", {}, name), h("dd", {}, value)]; }
  function pre(label, value) { return h("section", {}, h("h2", {}, label), h("pre", { tabindex: "0", "aria-label": label }, value)); }
  async function load() {
    const e = await api("GET", `executions/${id}`);
    const pct = e.progress === null ? null : Math.round(e.progress * 100);
    const body = h("div", {},
      h("p", {}, h("a", { href: "#/executions" }, "All executions")),
      h("h1", {}, "Execution ", h("span", { class: "mono" }, e.id)),
      actions(e),
      h("dl", { class: "facts" },
        field("Status", h("span", { id: "exec-status" }, statusBadge(e.status))),
        field("Function", h("span", { class: "mono" }, e.function)),
        field("Attempt", `${e.attempt} of ${e.max_tries}`),
        field("Progress", pct === null ? "—" : h("span", {},
          h("progress", { id: "exec-progress", max: "100", value: String(pct), "aria-label": "Progress" }),
          ` ${pct}%`, e.progress_message ? ` — ${e.progress_message}` : "")),
        field("Schedule", e.task_id ? h("a", { href: "#/schedules" }, e.task_id) : "—"),
        field("Scheduled for", when(e.scheduled_for)),
        field("Enqueued", when(e.enqueued_at)),
        field("Started", when(e.started_at)),
        field("Finished", when(e.finished_at)),
        field("Error kind", e.error_kind || "—")),
      pre("Arguments", json(e.args)), pre("Keyword arguments", json(e.kwargs)),
      pre("Metadata", json(e.metadata)), pre("Result", json(e.result)),
      e.error && pre("Error and traceback", e.error),
      h("section", {}, h("h2", {}, "Lifecycle events"),
        h("ol", { id: "lifecycle" }, lifecycleOf(e, seen).map((ev) => h("li", {}, `${when(ev.created_at)} `, h("strong", {}, ev.event_type),
          ev.payload.progress !== undefined && ev.payload.progress !== null ? ` ${Math.round(ev.payload.progress * 100)}%` : "")))));
    const active = document.activeElement;
    const focused = active && active.tagName === "BUTTON" ? active.textContent : null;
    content.replaceChildren(body);
    if (focused) for (const b of content.querySelectorAll("button")) if (b.textContent === focused) b.focus();
    return e;
  }
  return {
    async render(el, arg) {
      main = el; id = arg;
      content = h("div", {});
      main.replaceChildren(h("div", { id: "notice", class: "notice", role: "status" }), content);
      await load();
    },
    onEvents(batch) {
      const mine = batch.filter((ev) => ev.payload && ev.payload.execution_id === id);
      if (!mine.length) return;
      seen.push(...mine);
      if (!pending) pending = setTimeout(() => { pending = null; load().catch(() => {}); }, 50);
    },
    stop() { clearTimeout(pending); },
  };
}

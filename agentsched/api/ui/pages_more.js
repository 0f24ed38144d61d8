/* Pages about the app's machinery: Schedules, Workers, Events and Dead letters. */
"use strict";

/* ---- Schedules ------------------------------------------------------------------- */
const SCHEDULE_FIELDS = ["name", "function", "cron", "interval", "timezone", "args", "kwargs"];

function schedulesPage() {
  let main = null, listBox = null, formBox = null, timer = null, lastLoad = 0;
  async function act(s, label, method, path) {
    try {
      const out = await api(method, path);
      say(label === "Run now" ? `${s.name}: run ${out.id.slice(0, 8)} queued` : `${s.name}: ${label.toLowerCase()}d`);
      await load();
    } catch (err) { say(errorText(err), true); }
  }
  function row(s, o) {
    const lastRun = o && o.last_execution_id
      ? h("a", { href: `#/executions/${o.last_execution_id}` }, statusBadge(o.last_status))
      : (s.last_run_at ? when(s.last_run_at) : "never");
    const next = !s.enabled ? "disabled" : (o && o.next_runs.length ? h("ul", { class: "plain" }, o.next_runs.map((t) => h("li", {}, when(t)))) : "—");
    return h("tr", { "data-id": s.id, "data-name": s.name },
      h("th", { scope: "row" }, s.name),
      h("td", { class: "mono" }, s.function),
      h("td", {}, o ? o.description : (s.cron || `${s.interval}s`)),
      h("td", {}, s.timezone),
      h("td", { class: "next" }, next),
      h("td", {}, lastRun),
      h("td", {}, s.source),
      h("td", {}, s.skipped_runs),
      h("td", { class: "state" }, s.enabled ? "Enabled" : "Disabled"),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => act(s, "Run now", "POST", `tasks/${s.id}/run`) }, "Run now"),
        s.enabled
          ? h("button", { type: "button", onclick: () => act(s, "Disable", "POST", `tasks/${s.id}/disable`) }, "Disable")
          : h("button", { type: "button", onclick: () => act(s, "Enable", "POST", `tasks/${s.id}/enable`) }, "Enable"),
        h("button", { type: "button", onclick: () => showForm(s) }, "Edit"),
        h("button", { type: "button", onclick: () => remove(s) }, "Delete"))));
  }
  async function remove(s) {
    if (!confirm(`Delete the schedule ${s.name}? Its past executions stay in the history.`)) return;
    try { await api("DELETE", `tasks/${s.id}`); say(`${s.name}: deleted`); await load(); }
    catch (err) { say(errorText(err), true); }
  }
  async function load() {
    lastLoad = Date.now();
    const [list, outlook] = await Promise.all([api("GET", "tasks?limit=500"), api("GET", "schedule-outlook")]);
    const byId = new Map(outlook.items.map((o) => [o.task_id, o]));
    listBox.replaceChildren(
      list.items.length === 0 ? h("p", {}, "No schedules yet.") :
        table(`${list.total} schedule${list.total === 1 ? "" : "s"}`,
          ["Name", "Function", "Timing", "Timezone", "Next runs", "Last run", "Source", "Skipped runs", "State", "Actions"],
          list.items.map((s) => row(s, byId.get(s.id)))));
  }
  function showForm(s) {
    const editing = Boolean(s);
    const input = (name, label, attrs, value) => {
      const el = h(attrs && attrs.multiline ? "textarea" : "input", Object.assign({ id: `sf-${name}`, name, "aria-describedby": `err-${name}` }, attrs || {}, { multiline: null }));
      if (value !== undefined && value !== null) el.value = value;
      return h("div", { class: "field" }, h("label", { for: `sf-${name}` }, label), el,
        h("span", { id: `err-${name}`, class: "field-error", role: "alert" }));
    };
    const functions = h("datalist", { id: "sf-functions" });
    api("GET", "functions").then((f) => functions.replaceChildren(...f.items.map((x) => h("option", { value: x.name })))).catch(() => {});
    const enabled = h("input", { id: "sf-enabled", type: "checkbox", name: "enabled", checked: editing ? s.enabled : true });
    const formError = h("p", { class: "error", role: "alert" });
    const form = h("form", { class: "schedule-form", "aria-label": editing ? `Edit schedule ${s.name}` : "New schedule", novalidate: true },
      h("h2", {}, editing ? `Edit ${s.name}` : "New schedule"), formError,
      input("name", "Name", { required: true, autocomplete: "off" }, editing ? s.name : ""),
      input("function", "Function", { required: true, list: "sf-functions", autocomplete: "off" }, editing ? s.function : ""), functions,
      input("cron", "Cron", { placeholder: "*/5 * * * *", autocomplete: "off" }, editing ? s.cron : ""),
      input("interval", "Interval", { placeholder: "30s, 5m, 1h", autocomplete: "off" }, editing && s.interval !== null ? String(s.interval) : ""),
      input("timezone", "Timezone", { autocomplete: "off" }, editing ? s.timezone : "UTC"),
      input("args", "Arguments (JSON list)", { multiline: true, rows: "2" }, json(editing ? s.args : [])),
      input("kwargs", "Keyword arguments (JSON object)", { multiline: true, rows: "2" }, json(editing ? s.kwargs : {})),
      h("div", { class: "field check" }, enabled, h("label", { for: "sf-enabled" }, "Enabled")),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Save"),
        h("button", { type: "button", onclick: () => formBox.replaceChildren() }, "Close")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      for (const f of SCHEDULE_FIELDS) { form.querySelector(`#err-${f}`).textContent = ""; form.querySelector(`#sf-${f}`).removeAttribute("aria-invalid"); }
      formError.textContent = "";
      const v = (name) => form.querySelector(`#sf-${name}`).value.trim();
      const body = { name: v("name"), function: v("function"), timezone: v("timezone") || "UTC", enabled: enabled.checked,
        cron: v("cron") || null, interval: v("interval") || null };
      if (/^\d+(\.\d+)?$/.test(body.interval || "")) body.interval = Number(body.interval);
      const bad = {};
      for (const name of ["args", "kwargs"]) {
        try { body[name] = JSON.parse(v(name) || (name === "args" ? "[]" : "{}")); } catch (_) { bad[name] = "is not valid JSON"; }
      }
      if (!editing) { if (body.cron === null) delete body.cron; if (body.interval === null) delete body.interval; }
      const errors = Object.keys(bad).length ? bad : null;
      try {
        if (errors) throw Object.assign(new ApiError(422, null), { fieldErrors: () => errors });
        const saved = editing ? await api("PATCH", `tasks/${s.id}`, body) : await api("POST", "tasks", body);
        formBox.replaceChildren();
        say(`${saved.name}: saved`);
        await load();
      } catch (err) {
        const fields = err instanceof ApiError && err.status === 422 ? err.fieldErrors() : {};
        let shown = false;
        for (const [f, msg] of Object.entries(fields)) {
          const slot = form.querySelector(`#err-${f}`);
          if (slot) { slot.textContent = msg; form.querySelector(`#sf-${f}`).setAttribute("aria-invalid", "true"); shown = true; }
          else formError.textContent = `${f}: ${msg}`;
        }
        if (!shown && !formError.textContent) formError.textContent = errorText(err);
        const first = form.querySelector("[aria-invalid=true]");
        if (first) first.focus();
      }
    });
    formBox.replaceChildren(form);
    form.querySelector(editing ? "#sf-cron" : "#sf-name").focus();
  }
  return {
    async render(el) {
      main = el;
      listBox = h("div", {});
      formBox = h("div", {});
      main.replaceChildren(h("h1", {}, "Schedules"), h("div", { id: "notice", class: "notice", role: "status" }),
        h("button", { type: "button", onclick: () => showForm(null) }, "New schedule"), formBox, listBox);
      await load();
      timer = setInterval(() => load().catch(() => {}), 5000);
    },
    onEvents() { if (Date.now() - lastLoad > 2000) load().catch(() => {}); },
    stop() { clearInterval(timer); },
  };
}

/* ---- Workers --------------------------------------------------------------------- */
function workersPage() {
  let main = null, timer = null;
  async function load() {
    const w = await api("GET", "workers");
    main.replaceChildren(h("h1", {}, "Workers"),
      w.items.length === 0 ? h("p", {}, "No worker of this app has a recent heartbeat.") :
        table(`${w.total} live worker${w.total === 1 ? "" : "s"}`,
          ["Id", "Host", "PID", "Started", "Running now", "Jobs done", "Last heartbeat"],
          w.items.map((x) => h("tr", {}, h("th", { scope: "row", class: "mono" }, x.id), h("td", {}, x.host), h("td", {}, x.pid ?? "—"),
            h("td", {}, when(x.started_at)), h("td", {}, x.running ?? "—"), h("td", {}, x.done ?? "—"), h("td", {}, ago(x.last_heartbeat))))));
  }
  return {
    async render(el) { main = el; await load(); timer = setInterval(() => load().catch(() => {}), 2000); },
    onEvents() {},
    stop() { clearInterval(timer); },
  };
}

/* ---- Events ---------------------------------------------------------------------- */
const KEEP_EVENTS = 200;

function eventsPage() {
  let stopStream = null, tbody = null, count = null, shown = 0, pattern = "*";
  function start() {
    if (stopStream) stopStream();
    tbody.replaceChildren();
    shown = 0;
    // Stream ids start with their time in ms: begin a minute back, so the tail has context.
    const q = new URLSearchParams({ from_id: `${Date.now() - 60000}-0` });
    for (const p of pattern.split(/[\s,]+/).filter(Boolean)) q.append("pattern", p);
    stopStream = followEvents(q.toString(), (batch) => {
      // Coalesced: one DOM update per batch, however many events arrived.
      const recent = batch.slice(-KEEP_EVENTS).reverse();
      const frag = document.createDocumentFragment();
      for (const ev of recent) {
        frag.append(h("tr", {}, h("td", {}, when(ev.created_at)), h("td", { class: "mono" }, ev.event_type),
          h("td", {}, ev.source_agent), h("td", {}, ev.target_agent || "all"),
          h("td", { class: "mono payload" }, JSON.stringify(ev.payload).slice(0, 300))));
      }
      tbody.prepend(frag);
      while (tbody.rows.length > KEEP_EVENTS) tbody.deleteRow(-1);
      shown += batch.length;
      count.textContent = `${shown} event${shown === 1 ? "" : "s"} received, from one minute before you opened the page (the latest ${Math.min(shown, KEEP_EVENTS)} shown)`;
    }, { every: 250 });
  }
  return {
    async render(el) {
      tbody = h("tbody", {});
      count = h("p", { role: "status" }, "No event in the last minute yet; waiting…");
      const patternInput = h("input", { id: "ev-pattern", value: pattern, autocomplete: "off" });
      const t = table("Live events, newest first", ["Time", "Type", "Source", "Target", "Payload"], []);
      t.querySelector("table").replaceChild(tbody, t.querySelector("tbody"));
      el.replaceChildren(h("h1", {}, "Events"),
        h("form", { class: "filters", role: "search", "aria-label": "Filter events",
          onsubmit: (ev) => { ev.preventDefault(); pattern = patternInput.value.trim() || "*"; start(); } },
          h("div", { class: "field" }, h("label", { for: "ev-pattern" }, "Pattern (fnmatch, e.g. task.*)"), patternInput),
          h("button", { type: "submit" }, "Follow")),
        count, t);
      start();
    },
    onEvents() {},
    stop() { if (stopStream) stopStream(); },
  };
}

/* ---- Dead letters ---------------------------------------------------------------- */
function deadLettersPage() {
  let main = null, box = null;
  async function replay(d) {
    try {
      const ev = await api("POST", `dead-letters/${encodeURIComponent(d.entry_id)}/replay`);
      say(`Replayed ${ev.event_type} ${ev.id.slice(0, 8)} to ${ev.target_agent}`);
      await load();
    } catch (err) { say(errorText(err), true); }
  }
  async function load() {
    const list = await api("GET", "dead-letters");
    box.replaceChildren(list.items.length === 0 ? h("p", {}, "No dead letters.") :
      table(`${list.total} dead letter${list.total === 1 ? "" : "s"}`, ["Entry", "Event type", "Error", "Deliveries", "Payload", "Actions"],
        list.items.map((d) => h("tr", { "data-entry": d.entry_id },
          h("th", { scope: "row", class: "mono" }, d.entry_id),
          h("td", { class: "mono" }, d.event ? d.event.event_type : "(malformed)"),
          h("td", {}, d.reason), h("td", {}, d.deliveries),
          h("td", { class: "mono payload" }, d.event ? JSON.stringify(d.event.payload).slice(0, 200) : (d.data || "").slice(0, 200)),
          h("td", {}, d.event ? h("button", { type: "button", onclick: () => replay(d) }, "Replay") : "")))));
  }
  return {
    async render(el) {
      main = el;
      box = h("div", {});
      main.replaceChildren(h("h1", {}, "Dead letters"), h("div", { id: "notice", class: "notice", role: "status" }), box);
      await load();
    },
    onEvents() {},
    stop() {},
  };
}

/* agentsched dashboard: API calls (with the key prompt), the live event stream, DOM helpers.
   Plain JavaScript, no build step: everything comes from the public REST API. */
"use strict";

const API_BASE = new URL("../", location.href).pathname; // the router's prefix + "/"
const KEY_STORE = "agentsched-api-key";

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail;
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
  /** {field: message} of a 422 body, by the last element of each error's loc. */
  fieldErrors() {
    const out = {};
    const detail = this.body && this.body.detail;
    if (Array.isArray(detail)) {
      for (const e of detail) {
        const loc = (e.loc || []).filter((p) => p !== "body");
        out[loc.length ? String(loc[0]) : "_"] = e.msg;
      }
    }
    return out;
  }
}

let keyPrompt = null;

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

/** Show the key dialog (once, however many calls wait on it); resolves with the key. */
function askKey(refused) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = refused ? "The key was refused." : "";
  keyPrompt = new Promise((resolve) => {
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_STORE, input.value);
      dialog.close();
      input.value = "";
      keyPrompt = null;
      resolve(apiKey());
    };
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return keyPrompt;
}

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  const key = apiKey();
  if (key !== null) h["X-API-Key"] = key;
  return h;
}

/** Call the API; on 401 ask for the key and try again. Resolves with the JSON body. */
async function api(method, path, body) {
  for (;;) {
    const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(API_BASE + path, init);
    if (response.status === 401) {
      await askKey(apiKey() !== null);
      continue;
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { detail: text }; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

/** Follow `events/stream` with fetch (EventSource cannot send X-API-Key). Calls
    onBatch(events) at most every `every` ms, so a busy bus cannot flood the page.
    Returns a function that stops it. */
function followEvents(query, onBatch, opts) {
  const every = (opts && opts.every) || 200;
  const onState = (opts && opts.onState) || (() => {});
  const controller = new AbortController();
  let lastId = null;
  let pending = [];
  let timer = null;
  let stopped = false;
  const flush = () => {
    timer = null;
    const batch = pending;
    pending = [];
    if (batch.length && !stopped) onBatch(batch);
  };
  const push = (event) => {
    pending.push(event);
    if (pending.length > 2000) pending.splice(0, pending.length - 2000);
    if (timer === null) timer = setTimeout(flush, every);
  };
  async function run() {
    while (!stopped) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h["Last-Event-ID"] = lastId;
        const response = await fetch(API_BASE + "events/stream?" + query, { headers: h, signal: controller.signal });
        if (response.status === 401) { await askKey(apiKey() !== null); continue; }
        if (!response.ok) throw new ApiError(response.status, null);
        onState(true);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let data = "";
            let id = null;
            for (const line of frame.split("\n")) {
              if (line.startsWith("data:")) data += line.slice(5).trim();
              else if (line.startsWith("id:")) id = line.slice(3).trim();
            }
            if (id) lastId = id;
            if (data) {
              try { const ev = JSON.parse(data); ev._id = id; push(ev); } catch (_) { /* not JSON */ }
            }
          }
        }
      } catch (err) {
        if (stopped || (err && err.name === "AbortError")) return;
      }
      onState(false);
      if (!stopped) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  run();
  return () => { stopped = true; controller.abort(); if (timer) clearTimeout(timer); };
}

/** h("td", {class: "x"}, "text", child): a DOM element; text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function when(value) {
  if (!value) return "—";
  const d = new Date(value);
  // The zone is named: a schedule's fire times are read against its own timezone.
  return d.toLocaleString(undefined, { hour12: false, timeZoneName: "short" });
}

function ago(value) {
  if (!value) return "—";
  const s = Math.round((Date.now() - new Date(value).getTime()) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 60) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  return when(value);
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function statusBadge(status) {
  return h("span", { class: `badge s-${status}`, "data-status": status }, status);
}

/** A table with a caption and column headers; rows are arrays of cells. */
function table(caption, columns, rows) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

function say(message, isError) {
  const box = document.getElementById("notice");
  if (!box) return;
  box.textContent = message;
  box.className = isError ? "notice error" : "notice";
}

function errorText(err) {
  return err instanceof ApiError ? `${err.status}: ${err.message}` : String(err);
}

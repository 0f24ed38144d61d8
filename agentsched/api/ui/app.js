/* The dashboard's shell: hash routes, the navigation, and one live stream of task events
   whose batches go to the page on screen. */
"use strict";

const ROUTES = {
  overview: overviewPage,
  executions: executionsPage,
  schedules: schedulesPage,
  workers: workersPage,
  events: eventsPage,
  "dead-letters": deadLettersPage,
};
let current = null;

async function route() {
  const [, name = "overview", arg] = location.hash.replace(/^#/, "").split("/");
  const key = ROUTES[name] ? name : "overview";
  const make = arg && key === "executions" ? executionPage : ROUTES[key];
  if (current) current.stop();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${key}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { role: "status" }, "Loading…"));
  main.setAttribute("aria-busy", "true"); // until the page's first data is on screen
  const page = make();
  current = page;
  try {
    await page.render(main, arg ? decodeURIComponent(arg) : undefined);
    const title = main.querySelector("h1");
    document.title = `${title ? title.textContent : key} · agentsched`;
  } catch (err) {
    if (current === page) main.replaceChildren(h("h1", {}, "Could not load this page"), h("p", { class: "error", role: "alert" }, errorText(err)));
  } finally {
    if (current === page) main.setAttribute("aria-busy", "false");
  }
}

async function start() {
  window.addEventListener("hashchange", () => { route(); document.getElementById("main").focus({ preventScroll: true }); });
  if (!location.hash) history.replaceState(null, "", "#/overview");
  // The stream first: once it answers, every later event reaches the page, so nothing
  // happens between the page's first data and its first event unseen. (At most 3 s:
  // a page without its stream still shows its data.)
  const live = document.getElementById("live");
  let connected;
  const open = new Promise((resolve) => { connected = resolve; });
  followEvents("pattern=task.*", (batch) => { if (current) current.onEvents(batch); },
    { every: 200, onState: (up) => { live.textContent = up ? "live" : "reconnecting"; live.className = up ? "live up" : "live"; if (up) connected(); } });
  await Promise.race([open, new Promise((r) => setTimeout(r, 3000))]);
  await route();
  api("GET", "health").then((hh) => { document.getElementById("app-name").textContent = hh.app; }).catch(() => {});
}

start();

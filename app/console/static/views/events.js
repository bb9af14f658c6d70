// Events: each event's progress (n of m jobs terminal) and its jobs.
import { api, ApiError, optional, withQuery } from "../api.js";
import { progress } from "../charts.js";
import { ago, clear, el, every, fmtTime, panel, STATUSES, table, TERMINAL } from "../util.js";
import { eventHref, jobColumns } from "./jobs.js";

const REFRESH_MS = 10000;

function lookupForm() {
  const input = el("input", { name: "event_id", placeholder: "event_id", autocomplete: "off" });
  return el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); if (input.value.trim()) location.hash = `#/events/${encodeURIComponent(input.value.trim())}`; } },
    el("label", {}, "open an event", input), el("button", { type: "submit" }, "Open"));
}

function countBadges(counts) {
  return STATUSES.filter((s) => counts[s]).map((s) => el("span", { class: `pill status-${s}` }, `${counts[s]} ${s.replace("_", " ")}`));
}

export async function renderEvents({ view }) {
  const holder = el("div", { id: "events-table" });
  const more = el("button", { type: "button", hidden: true }, "Load more");
  view.append(el("div", { class: "title-row" }, el("h1", {}, "Events")), lookupForm(), el("section", { class: "panel flush" }, holder), el("div", { class: "more-row" }, more));
  let events = [];
  let cursor = null;

  function draw() {
    clear(holder).append(table([
      { title: "received", cell: (e) => el("span", { title: fmtTime(e.received_at) }, ago(e.received_at)) },
      { title: "account", cell: (e) => e.account, class: "mono" },
      { title: "event_id", cell: (e) => el("a", { href: eventHref(e.account, e.event_id), class: "mono" }, e.event_id) },
      { title: "sku", cell: (e) => e.sku, class: "mono" },
      { title: "reason", cell: (e) => e.reason },
      { title: "progress", cell: (e) => el("span", { class: "progress-cell" }, progress(e.jobs_terminal, e.jobs_total), ` ${e.jobs_terminal} of ${e.jobs_total}`) },
      { title: "jobs", cell: (e) => countBadges(e.counts) },
    ], events, { empty: "No events yet." }));
    more.hidden = !cursor;
  }

  async function firstPage() {
    const page = await optional(withQuery("/v1/stockout-events", { limit: 50 }));
    if (page === null) {
      clear(holder).append(el("p", { class: "muted pad" }, "This server cannot list events; open one by its id."));
      return false;
    }
    events = page.items;
    cursor = page.next_cursor;
    draw();
    return true;
  }

  more.addEventListener("click", async () => {
    const page = await api(withQuery("/v1/stockout-events", { limit: 50, cursor }));
    events = events.concat(page.items);
    cursor = page.next_cursor;
    draw();
  });

  if (!(await firstPage())) return null;
  return every(REFRESH_MS, async () => { if (events.length <= 50) await firstPage(); });
}

export async function renderEvent({ view, params }, eventId) {
  const account = params.get("account");
  const head = el("div", { class: "title-row" });
  const facts = el("dl", { class: "facts" });
  const holder = el("div", { id: "event-jobs" });
  view.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/events" }, "Events"), " / ", el("span", { class: "mono" }, eventId)),
    head,
    panel("Event", facts),
    el("section", { class: "panel flush" }, el("h2", { class: "pad" }, "Jobs"), holder),
  );

  async function load() {
    let event;
    try {
      event = await api(withQuery(`/v1/stockout-events/${encodeURIComponent(eventId)}`, account ? { account } : {}));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        clear(head).append(el("h1", {}, "No such event"));
        return;
      }
      throw e;
    }
    const done = event.jobs.filter((j) => TERMINAL.includes(j.status)).length;
    const counts = {};
    for (const j of event.jobs) counts[j.status] = (counts[j.status] || 0) + 1;
    clear(head).append(el("h1", {}, el("span", { class: "mono" }, event.event_id)), el("span", { class: "progress-cell big-progress" }, progress(done, event.jobs.length), ` ${done} of ${event.jobs.length} jobs terminal`));
    clear(facts);
    for (const [k, v] of [["account", event.account], ["sku", event.sku], ["reason", event.reason], ["occurred", fmtTime(event.occurred_at)], ["received", fmtTime(event.received_at)], ["jobs", countBadges(counts)], ["list", el("a", { href: `#/jobs?event_id=${encodeURIComponent(event.event_id)}` }, "open in Jobs")]]) {
      facts.append(el("dt", {}, k), el("dd", {}, v));
    }
    clear(holder).append(table(jobColumns(), event.jobs, { empty: "No jobs." }));
  }

  await load();
  return every(REFRESH_MS, load);
}

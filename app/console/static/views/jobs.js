// Jobs: the API's filters, cursor paging ("Load more") and a live refresh of the first page.
import { api, withQuery } from "../api.js";
import { clear, el, every, fmtTime, ago, STATUSES, statusBadge, table } from "../util.js";

const FILTERS = ["status", "account", "payment_id", "imp_uid", "merchant_uid", "sku", "event_id"];
const REFRESH_MS = 10000;

export function jobColumns() {
  return [
    { title: "created", cell: (j) => el("span", { title: fmtTime(j.created_at) }, ago(j.created_at)) },
    { title: "account", cell: (j) => j.account, class: "mono" },
    { title: "payment_id", cell: (j) => el("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.payment_id) },
    { title: "merchant_uid", cell: (j) => j.merchant_uid || "—", class: "mono" },
    { title: "status", cell: (j) => statusBadge(j.status) },
    { title: "payment", cell: (j) => j.payment_status || "—" },
    { title: "attempts", cell: (j) => j.attempts, class: "num" },
    { title: "events", cell: (j) => j.event_ids.map((e, i) => [i ? ", " : "", el("a", { href: eventHref(j.account, e) }, e)]) },
    { title: "error", cell: (j) => (j.error ? el("span", { class: "err-text", title: j.error.message || "" }, errorSummary(j.error)) : "") },
    { title: "updated", cell: (j) => el("span", { title: fmtTime(j.updated_at) }, ago(j.updated_at)) },
  ];
}

// An event is named by its account and id: two accounts may use the same event_id.
export function eventHref(account, eventId) {
  return `#/events/${encodeURIComponent(eventId)}?account=${encodeURIComponent(account)}`;
}

export function errorSummary(error) {
  const bits = [];
  if (error.http_status) bits.push(`HTTP ${error.http_status}`);
  if (error.code !== null && error.code !== undefined) bits.push(`code ${error.code}`);
  const text = bits.join(" ");
  return error.message ? `${text}${text ? ": " : ""}${error.message}` : text;
}

export async function renderJobs({ view, params }) {
  const current = Object.fromEntries(FILTERS.map((f) => [f, params.get(f) || ""]));
  const inputs = {};
  const statusSelect = el("select", { name: "status", id: "f-status" },
    el("option", { value: "" }, "any status"),
    STATUSES.map((s) => el("option", { value: s, selected: current.status === s }, s)));
  inputs.status = statusSelect;
  const fields = [el("label", {}, "status", statusSelect)];
  for (const f of FILTERS.slice(1)) {
    inputs[f] = el("input", { name: f, id: `f-${f}`, value: current[f], autocomplete: "off" });
    fields.push(el("label", {}, f, inputs[f]));
  }
  const form = el("form", { class: "filters", id: "job-filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const f of FILTERS) if (inputs[f].value.trim()) q.set(f, inputs[f].value.trim());
    location.hash = `#/jobs${q.toString() ? `?${q}` : ""}`;
  } },
  fields,
  el("button", { type: "submit", class: "primary" }, "Filter"),
  el("a", { href: "#/jobs", class: "button" }, "Clear"));

  const live = el("input", { type: "checkbox", id: "live", checked: true });
  const holder = el("div", { id: "jobs-table" });
  const more = el("button", { type: "button", id: "more", hidden: true }, "Load more");
  const info = el("span", { class: "muted small" });
  view.append(
    el("div", { class: "title-row" }, el("h1", {}, "Jobs"), el("label", { class: "inline" }, live, " live"), info),
    form,
    el("section", { class: "panel flush" }, holder),
    el("div", { class: "more-row" }, more),
  );

  let jobs = [];
  let cursor = null;
  const query = Object.fromEntries(FILTERS.filter((f) => current[f]).map((f) => [f, current[f]]));

  function draw() {
    clear(holder).append(table(jobColumns(), jobs, { empty: "No jobs match these filters.", rowAttrs: (j) => ({ "data-id": j.id, "data-status": j.status }) }));
    more.hidden = !cursor;
    info.textContent = `${jobs.length} shown · updated ${new Date().toLocaleTimeString()}`;
  }

  async function firstPage() {
    const page = await api(withQuery("/v1/jobs", { ...query, limit: 50 }));
    jobs = page.items;
    cursor = page.next_cursor;
    draw();
  }

  more.addEventListener("click", async () => {
    const page = await api(withQuery("/v1/jobs", { ...query, limit: 50, cursor }));
    jobs = jobs.concat(page.items);
    cursor = page.next_cursor;
    draw();
  });

  await firstPage();
  // Live refresh only while the first page is all that is shown: never drop loaded pages.
  return every(REFRESH_MS, async () => {
    if (live.checked && jobs.length <= 50) await firstPage();
  });
}

// Webhook endpoints and their deliveries, with replay. Shown only where the server has the
// endpoints API and the key holds webhooks:write.
import { api, ApiError, optional, withQuery } from "../api.js";
import { ago, clear, confirmDialog, el, every, fmtTime, panel, table, toast } from "../util.js";

const REFRESH_MS = 10000;

function unavailable(view, text) {
  view.append(el("div", { class: "title-row" }, el("h1", {}, "Webhooks")), el("p", { class: "notice" }, text));
  return null;
}

async function endpointsOrNull() {
  try {
    return await optional("/v1/webhook-endpoints");
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return undefined;
    throw e;
  }
}

export async function renderWebhooks({ view }) {
  const list = await endpointsOrNull();
  if (list === null) return unavailable(view, "This server has no webhook endpoints API.");
  if (list === undefined) return unavailable(view, "This key lacks the webhooks:write scope.");
  view.append(
    el("div", { class: "title-row" }, el("h1", {}, "Webhook endpoints")),
    el("section", { class: "panel flush" }, table([
      { title: "url", cell: (e) => el("a", { href: `#/webhooks/${e.id}`, class: "mono" }, e.url) },
      { title: "description", cell: (e) => e.description || "—" },
      { title: "event types", cell: (e) => (e.event_types && e.event_types.length ? e.event_types.join(", ") : "all") },
      { title: "enabled", cell: (e) => (e.enabled ? "yes" : "no") },
      { title: "created", cell: (e) => fmtTime(e.created_at) },
    ], list.items, { empty: "No webhook endpoints registered." })),
  );
  return null;
}

export async function renderEndpoint({ view }, id) {
  let endpoint;
  try {
    endpoint = await api(`/v1/webhook-endpoints/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 403)) return unavailable(view, "No such endpoint, or this key may not see it.");
    throw e;
  }
  const status = el("select", { id: "d-status" }, ["", "pending", "delivered", "failed"].map((s) => el("option", { value: s }, s || "any status")));
  const holder = el("div", { id: "deliveries" });
  const more = el("button", { type: "button", hidden: true }, "Load more");
  const since = el("input", { type: "datetime-local", id: "replay-since", required: true });
  const replay = el("form", { class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    const when = new Date(since.value);
    if (Number.isNaN(when.getTime())) return;
    const ok = await confirmDialog({
      title: "Replay messages?",
      text: `Send again every message for ${endpoint.url} created since ${fmtTime(when.toISOString())}, with the same webhook-id (receivers deduplicate by it).`,
      warning: "The receiver gets these messages again.",
      confirm: "Replay",
      danger: false,
    });
    if (!ok) return;
    try {
      const answer = await api(`/v1/webhook-endpoints/${endpoint.id}/replay`, { method: "POST", body: { since: when.toISOString() } });
      toast(`Replaying ${answer.messages} message${answer.messages === 1 ? "" : "s"}`, "ok");
      await firstPage();
    } catch (err) {
      toast(`Replay refused: ${err.message}`, "error");
    }
  } }, el("label", {}, "replay messages since", since), el("button", { type: "submit", class: "primary" }, "Replay…"));
  view.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/webhooks" }, "Webhooks"), " / ", el("span", { class: "mono" }, endpoint.url)),
    el("div", { class: "title-row" }, el("h1", {}, el("span", { class: "mono" }, endpoint.url))),
    panel("Replay", replay),
    el("div", { class: "filters" }, el("label", {}, "status", status)),
    el("section", { class: "panel flush" }, holder),
    el("div", { class: "more-row" }, more),
  );
  let items = [];
  let cursor = null;

  function draw() {
    clear(holder).append(table([
      { title: "created", cell: (d) => el("span", { title: fmtTime(d.created_at) }, ago(d.created_at)) },
      { title: "type", cell: (d) => d.event_type },
      { title: "subject", cell: (d) => (d.job_id ? el("a", { href: `#/jobs/${d.job_id}`, class: "mono" }, d.job_id.slice(0, 8)) : d.event_id ? el("a", { href: `#/events/${encodeURIComponent(d.event_id)}`, class: "mono" }, d.event_id) : "—") },
      { title: "status", cell: (d) => el("span", { class: `pill delivery-${d.status}` }, d.status) },
      { title: "attempts", cell: (d) => d.attempts, class: "num" },
      { title: "last answer", cell: (d) => [d.last_http_status ? `HTTP ${d.last_http_status}` : "", d.last_error ? ` ${d.last_error}` : ""].join("") || "—" },
      { title: "next attempt", cell: (d) => fmtTime(d.next_attempt_at) },
      { title: "delivered", cell: (d) => fmtTime(d.delivered_at) },
    ], items, { empty: "No deliveries." }));
    more.hidden = !cursor;
  }

  async function firstPage() {
    const page = await api(withQuery(`/v1/webhook-endpoints/${endpoint.id}/deliveries`, { status: status.value, limit: 50 }));
    items = page.items;
    cursor = page.next_cursor;
    draw();
  }
  status.addEventListener("change", firstPage);
  more.addEventListener("click", async () => {
    const page = await api(withQuery(`/v1/webhook-endpoints/${endpoint.id}/deliveries`, { status: status.value, limit: 50, cursor }));
    items = items.concat(page.items);
    cursor = page.next_cursor;
    draw();
  });
  await firstPage();
  return every(REFRESH_MS, async () => { if (items.length <= 50) await firstPage(); });
}

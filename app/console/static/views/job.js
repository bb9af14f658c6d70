// One job: its facts, its actions, and ONE timeline of everything that happened to it:
// upstream calls (attempts), operator actions, webhook deliveries, creation and finish.
import { api, ApiError, optional, withQuery } from "../api.js";
import { clear, el, every, fmtMoney, fmtTime, panel, statusBadge, TERMINAL } from "../util.js";
import { errorSummary } from "./jobs.js";
import { refundJobs, retryJobs } from "./actions.js";
import { driftText } from "./drift.js";

const REFRESH_MS = 5000;
const DELIVERY_PAGES = 3;

export async function renderJob({ view, session }, id) {
  const head = el("div", { class: "title-row" });
  const facts = el("dl", { class: "facts", id: "job-facts" });
  const actions = el("div", { class: "actions", id: "job-actions" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  view.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/jobs" }, "Jobs"), " / ", el("span", { class: "mono" }, id)),
    head,
    el("div", { class: "two wide-left" }, panel("Job", facts, actions), panel("Timeline", timeline)),
  );
  let lastStamp = "";

  async function load() {
    let job;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 422)) {
        clear(head).append(el("h1", {}, "No such job"));
        return false;
      }
      throw e;
    }
    const [attempts, actionList, deliveries] = await Promise.all([
      api(`/v1/jobs/${job.id}/attempts`),
      optional(`/v1/jobs/${job.id}/actions`),
      session.canWebhooks ? jobDeliveries(job.id) : Promise.resolve([]),
    ]);
    const stamp = JSON.stringify([job.updated_at, attempts.items.length, attempts.items.at(-1), actionList && actionList.items.length, deliveries]);
    if (stamp === lastStamp) return !TERMINAL.includes(job.status);
    lastStamp = stamp;
    drawHead(job);
    drawFacts(job);
    drawActions(job);
    drawTimeline(job, attempts.items, actionList ? actionList.items : [], deliveries);
    return true;
  }

  function drawHead(job) {
    clear(head).append(el("h1", {}, el("span", { class: "mono" }, job.payment_id), " ", statusBadge(job.status)));
  }

  function drawFacts(job) {
    const rows = [
      ["id", el("span", { class: "mono" }, job.id)],
      ["payment_id", el("span", { class: "mono" }, job.payment_id)],
      ["imp_uid", job.imp_uid ? el("span", { class: "mono" }, job.imp_uid) : "— (PortOne V2)"],
      ["merchant_uid", job.merchant_uid || "—"],
      ["status", statusBadge(job.status)],
      ["payment at iamport", job.payment_status || "—"],
      // Shown when the server's Job carries them (pay_method and on_paid are newer fields).
      ...("pay_method" in job ? [["pay method", job.pay_method]] : []),
      ...("on_paid" in job ? [["if paid", job.on_paid]] : []),
      ["cancel attempts", String(job.attempts)],
      ["next attempt", job.next_attempt_at ? fmtTime(job.next_attempt_at) : "—"],
      ["events", job.event_ids.map((e, i) => [i ? ", " : "", el("a", { href: `#/events/${encodeURIComponent(e)}` }, e)])],
      ["created", fmtTime(job.created_at)],
      ["finished", fmtTime(job.finished_at)],
    ];
    if (job.error) rows.push(["last error", el("span", { class: "err-text" }, errorSummary(job.error))]);
    if (job.drift) {
      const d = job.drift;
      const state = d.cleared_at ? ` · cleared by ${d.cleared_by} ${fmtTime(d.cleared_at)}: ${d.note}` : " · open (see the Drift queue)";
      rows.push(["drift", el("span", { class: d.cleared_at ? "" : "err-text", id: "job-drift" }, `${driftText(d)} (gateway: ${d.seen_status || "not found"}, seen ${fmtTime(d.seen_at)})${state}`)]);
    }
    for (const [label, record] of [["cancellation", job.cancellation], ["refund", job.refund]]) {
      if (!record) continue;
      rows.push([label, [fmtMoney(record.amount), " · ", fmtTime(record.cancelled_at), record.cancelled_by ? ` · by ${record.cancelled_by}` : "", record.pg_tid ? ` · pg_tid ${record.pg_tid}` : ""]]);
    }
    clear(facts);
    for (const [label, value] of rows) facts.append(el("dt", {}, label), el("dd", {}, value));
  }

  function drawActions(job) {
    clear(actions);
    // A jobs:read key sees no action buttons; the API refuses such a key anyway (403).
    if (!session.canWrite) return;
    if (job.status === "failed") {
      actions.append(el("button", { type: "button", class: "primary", id: "retry", onclick: async () => { if (await retryJobs([job])) { lastStamp = ""; await load(); } } }, "Retry"));
    }
    if (job.status === "needs_refund") {
      actions.append(el("button", { type: "button", class: "primary danger", id: "refund", onclick: async () => { if (await refundJobs([job])) { lastStamp = ""; await load(); } } }, "Refund…"));
    }
  }

  function drawTimeline(job, attempts, actionItems, deliveries) {
    const entries = [];
    entries.push({ at: job.created_at, kind: "created", title: "Job created", detail: job.event_ids.length ? `from event ${job.event_ids[0]}` : "" });
    for (const a of attempts) {
      const bits = [];
      if (a.http_status) bits.push(`HTTP ${a.http_status}`);
      if (a.code !== null && a.code !== undefined) bits.push(`code ${a.code}`);
      if (a.duration_ms !== null && a.duration_ms !== undefined) bits.push(`${a.duration_ms} ms`);
      if (a.trace_id) bits.push(`trace ${a.trace_id}`);
      entries.push({
        at: a.started_at,
        kind: `call call-${a.call}`,
        title: `${a.call} call #${a.n}: ${a.outcome || "in flight"}`,
        detail: [bits.join(" · "), a.message].filter(Boolean).join(" — "),
        outcome: a.outcome,
      });
    }
    for (const act of actionItems) {
      entries.push({ at: act.at, kind: `action action-${act.action}`, title: `${act.action} by ${act.key_name}`, detail: [`key ${act.key_id}`, ...Object.entries(act.detail || {}).map(([k, v]) => `${k} ${typeof v === "string" ? v : JSON.stringify(v)}`)].join(" · ") });
    }
    for (const d of deliveries) {
      entries.push({ at: d.created_at, kind: "webhook", title: `webhook ${d.event_type} → ${d.endpoint.url}: ${d.status}`, detail: `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}${d.last_http_status ? ` · last HTTP ${d.last_http_status}` : ""}${d.last_error ? ` · ${d.last_error}` : ""}${d.delivered_at ? ` · delivered ${fmtTime(d.delivered_at)}` : ""}` });
    }
    if (job.finished_at) entries.push({ at: job.finished_at, kind: `finished status-line-${job.status}`, title: `Finished: ${job.status.replace("_", " ")}`, detail: "" });
    // Stable order: by time, then by the order they were gathered in (creation first).
    entries.forEach((e, i) => { e.i = i; });
    entries.sort((a, b) => new Date(a.at) - new Date(b.at) || a.i - b.i);
    clear(timeline);
    for (const e of entries) {
      timeline.append(el("li", { class: `tl ${e.kind}${e.outcome && !["ok", "refused", "not_found"].includes(e.outcome) ? " tl-bad" : ""}` },
        el("time", { datetime: e.at }, fmtTime(e.at)),
        el("div", { class: "tl-body" }, el("strong", {}, e.title), e.detail ? el("div", { class: "tl-detail" }, e.detail) : null)));
    }
  }

  const live = await load();
  return live === false ? null : every(REFRESH_MS, load);
}

// The job's webhook deliveries, gathered from each endpoint's recent deliveries (newest first).
async function jobDeliveries(jobId) {
  let endpoints;
  try {
    endpoints = await optional("/v1/webhook-endpoints");
  } catch {
    return [];
  }
  if (!endpoints) return [];
  const found = [];
  for (const endpoint of endpoints.items) {
    let cursor = null;
    for (let page = 0; page < DELIVERY_PAGES; page++) {
      const answer = await optional(withQuery(`/v1/webhook-endpoints/${endpoint.id}/deliveries`, { limit: 100, cursor }));
      if (!answer) break;
      for (const d of answer.items) if (d.job_id === jobId) found.push({ ...d, endpoint });
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
  }
  return found;
}

// Work queues: needs_refund (refund or keep) and failed (retry), one by one or a selection.
import { api, withQuery } from "../api.js";
import { ago, clear, el, every, fmtTime, setBadges, table } from "../util.js";
import { errorSummary } from "./jobs.js";
import { refundJobs, retryJobs } from "./actions.js";

const REFRESH_MS = 10000;
const PAGE = 100;
// "Keep" is a person's decision not to refund (the goods ship after all). The API has no
// record of it, so the console only sets the job aside for this browser tab.
const KEPT = "stockout.console.kept";

function kept() {
  return new Set(JSON.parse(sessionStorage.getItem(KEPT) || "[]"));
}

function keep(ids) {
  const set = kept();
  for (const id of ids) set.add(id);
  sessionStorage.setItem(KEPT, JSON.stringify([...set]));
}

const QUEUES = {
  needs_refund: {
    title: "Needs refund",
    blurb: "Customers paid before their barcode could be voided: we hold money for goods we cannot ship. Refund the payment, or keep it if the order ships after all.",
    act: refundJobs,
    verb: "Refund",
  },
  failed: {
    title: "Failed",
    blurb: "iamport refused for good or the attempts ran out; the error says why. Retry once the cause (an outage, credentials) is fixed.",
    act: retryJobs,
    verb: "Retry",
  },
};

export async function renderQueue({ view, session }, name) {
  const queue = QUEUES[name];
  if (!queue) {
    view.append(el("h1", {}, "No such queue"));
    return null;
  }
  const selected = new Set();
  let jobs = [];
  let cursor = null;
  let showKept = false;
  const holder = el("div", { id: "queue-table" });
  const bulk = el("button", { type: "button", class: `primary${name === "needs_refund" ? " danger" : ""}`, id: "bulk", disabled: true }, `${queue.verb} selected`);
  const keepBulk = el("button", { type: "button", id: "keep-bulk", disabled: true, hidden: name !== "needs_refund" }, "Keep selected");
  const keptToggle = el("label", { class: "inline", hidden: name !== "needs_refund" }, el("input", { type: "checkbox", id: "show-kept", onchange: (e) => { showKept = e.target.checked; draw(); } }), " show kept");
  const count = el("span", { class: "muted small", id: "queue-count" });
  const more = el("button", { type: "button", hidden: true }, "Load more");
  view.append(
    el("div", { class: "title-row" }, el("h1", {}, queue.title), count),
    el("p", { class: "muted blurb" }, queue.blurb),
    session.canWrite ? el("div", { class: "toolbar" }, bulk, keepBulk, keptToggle) : el("p", { class: "notice" }, "This key can read only (jobs:read): actions need a key with jobs:write."),
    el("section", { class: "panel flush" }, holder),
    el("div", { class: "more-row" }, more),
  );

  function visible() {
    const set = kept();
    return jobs.filter((j) => showKept || !set.has(j.id));
  }

  function selectedJobs() {
    return visible().filter((j) => selected.has(j.id));
  }

  function syncButtons() {
    const n = selectedJobs().length;
    bulk.disabled = keepBulk.disabled = n === 0;
    bulk.textContent = n ? `${queue.verb} ${n} selected` : `${queue.verb} selected`;
  }

  async function act(list) {
    const results = await queue.act(list);
    if (!results) return;
    for (const r of results) if (r.ok) selected.delete(r.job.id);
    await firstPage();
  }

  function draw() {
    const rows = visible();
    const columns = [];
    if (session.canWrite) {
      const all = el("input", { type: "checkbox", id: "select-all", "aria-label": "select all", checked: rows.length > 0 && rows.every((j) => selected.has(j.id)), onchange: (e) => {
        for (const j of rows) e.target.checked ? selected.add(j.id) : selected.delete(j.id);
        draw();
      } });
      columns.push({ title: all, class: "check", cell: (j) => el("input", { type: "checkbox", class: "pick", "data-id": j.id, checked: selected.has(j.id), "aria-label": `select ${j.payment_id}`, onchange: (e) => {
        e.target.checked ? selected.add(j.id) : selected.delete(j.id);
        syncButtons();
      } }) });
    }
    columns.push(
      { title: "payment_id", cell: (j) => el("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.payment_id) },
      { title: "merchant_uid", cell: (j) => j.merchant_uid || "—", class: "mono" },
      { title: "events", cell: (j) => j.event_ids.join(", ") },
      { title: name === "failed" ? "error" : "payment", cell: (j) => (name === "failed" ? (j.error ? el("span", { class: "err-text" }, errorSummary(j.error)) : "—") : j.payment_status || "—") },
      { title: "finished", cell: (j) => el("span", { title: fmtTime(j.finished_at) }, ago(j.finished_at)) },
    );
    if (session.canWrite) {
      columns.push({ title: "", class: "row-actions", cell: (j) => [
        el("button", { type: "button", class: `small ${name === "needs_refund" ? "danger-outline" : ""}`, "data-action": name === "failed" ? "retry" : "refund", onclick: () => act([j]) }, name === "failed" ? "Retry" : "Refund…"),
        name === "needs_refund" && !kept().has(j.id) ? el("button", { type: "button", class: "small", "data-action": "keep", onclick: () => { keep([j.id]); selected.delete(j.id); draw(); } }, "Keep") : null,
      ] });
    }
    clear(holder).append(table(columns, rows, { empty: name === "failed" ? "No failed jobs." : "No payments wait for a refund decision.", rowAttrs: (j) => ({ "data-id": j.id }) }));
    const hidden = jobs.length - rows.length;
    count.textContent = `${rows.length} shown${hidden ? ` · ${hidden} kept` : ""}${cursor ? " · more below" : ""}`;
    more.hidden = !cursor;
    syncButtons();
  }

  async function firstPage() {
    const page = await api(withQuery("/v1/jobs", { status: name, limit: PAGE }));
    jobs = page.items;
    cursor = page.next_cursor;
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
    draw();
    api("/v1/stats").then((s) => setBadges(s.counts)).catch(() => {});
  }

  bulk.addEventListener("click", () => act(selectedJobs()));
  keepBulk.addEventListener("click", () => { keep(selectedJobs().map((j) => j.id)); selected.clear(); draw(); });
  more.addEventListener("click", async () => {
    const page = await api(withQuery("/v1/jobs", { status: name, limit: PAGE, cursor }));
    jobs = jobs.concat(page.items);
    cursor = page.next_cursor;
    draw();
  });

  await firstPage();
  return every(REFRESH_MS, async () => {
    if (jobs.length <= PAGE && !document.getElementById("confirm").open) await firstPage();
  });
}

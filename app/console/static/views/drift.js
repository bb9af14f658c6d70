// The Drift queue: finished jobs whose payment at the gateway contradicts them, as a
// reconciliation saw it (a cancelled barcode that was paid, a refund with money still held).
// Nothing changed the job; a person looks into each and clears it with a note.
import { api, ApiError, withQuery } from "../api.js";
import { ago, clear, el, every, fmtTime, statusBadge, table, toast } from "../util.js";

const REFRESH_MS = 10000;
const PAGE = 100;

const KINDS = {
  cancelled_but_paid: "cancelled here, paid at the gateway",
  cancelled_but_ready: "cancelled here, open again at the gateway",
  refunded_but_paid: "refunded here, money still held at the gateway",
  refunded_but_ready: "refunded here, open again at the gateway",
  needs_refund_but_ready: "held for a refund, but nothing is paid",
  needs_refund_but_failed: "held for a refund, but the payment failed",
  missing: "the gateway no longer knows the payment",
};

export function driftText(drift) {
  return KINDS[drift.kind] || drift.kind;
}

export async function renderDrift({ view, session }) {
  const holder = el("div", { id: "drift-table" });
  const count = el("span", { class: "muted small", id: "drift-count" });
  let jobs = [];
  let cursor = null;
  const more = el("button", { type: "button", hidden: true }, "Load more");
  view.append(
    el("div", { class: "title-row" }, el("h1", {}, "Drift"), count),
    el("p", { class: "muted blurb" }, "Finished jobs whose payment at the gateway says otherwise, found by a reconciliation. The job was not changed: look into each (iamport's admin, the order), then clear it with a note of what you found or did."),
    session.canWrite ? null : el("p", { class: "notice" }, "This key can read only (jobs:read): clearing needs a key with jobs:write."),
    el("section", { class: "panel flush" }, holder),
    el("div", { class: "more-row" }, more),
  );

  async function clearOne(job, input, button) {
    const note = input.value.trim();
    if (!note) {
      input.focus();
      toast("Write a note of what you found or did first.", "error");
      return;
    }
    button.disabled = true;
    try {
      await api(`/v1/jobs/${job.id}/drift/clear`, { method: "POST", body: { note } });
      toast(`Cleared the drift of ${job.imp_uid}.`, "ok");
      await firstPage();
    } catch (e) {
      button.disabled = false;
      const gone = e instanceof ApiError && e.code === "no_open_drift";
      toast(gone ? `${job.imp_uid}: someone cleared it already.` : `Could not clear it: ${e.message}`, "error");
      if (gone) await firstPage();
    }
  }

  function draw() {
    const columns = [
      { title: "imp_uid", cell: (j) => el("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.imp_uid) },
      { title: "account", cell: (j) => j.account },
      { title: "job", cell: (j) => statusBadge(j.status) },
      { title: "what the gateway shows", cell: (j) => [driftText(j.drift), " ", el("span", { class: "muted small" }, `(${j.drift.seen_status || "not found"})`)] },
      { title: "seen", cell: (j) => el("span", { title: fmtTime(j.drift.seen_at) }, ago(j.drift.seen_at)) },
    ];
    if (session.canWrite) {
      columns.push({ title: "", class: "row-actions", cell: (j) => {
        const input = el("input", { type: "text", class: "note", "data-id": j.id, maxlength: "1000", placeholder: "note", "aria-label": `note for ${j.imp_uid}` });
        const button = el("button", { type: "button", class: "small", "data-action": "clear-drift", onclick: () => clearOne(j, input, button) }, "Clear");
        return [input, button];
      } });
    }
    clear(holder).append(table(columns, jobs, { empty: "No drift: every finished job agrees with its payment.", rowAttrs: (j) => ({ "data-id": j.id }) }));
    count.textContent = `${jobs.length} open${cursor ? " · more below" : ""}`;
    more.hidden = !cursor;
  }

  async function firstPage() {
    const page = await api(withQuery("/v1/jobs", { drift: "open", limit: PAGE }));
    jobs = page.items;
    cursor = page.next_cursor;
    draw();
  }

  more.addEventListener("click", async () => {
    const page = await api(withQuery("/v1/jobs", { drift: "open", limit: PAGE, cursor }));
    jobs = jobs.concat(page.items);
    cursor = page.next_cursor;
    draw();
  });

  await firstPage();
  return every(REFRESH_MS, async () => {
    // Not while a person is typing a note.
    if (jobs.length <= PAGE && !(document.activeElement && document.activeElement.classList.contains("note"))) await firstPage();
  });
}

// Retry and refund, for one job or a selection: a confirmation that says exactly what will
// happen, then one request per job, each answer reported.
import { api, ApiError } from "../api.js";
import { confirmDialog, fmtMoney, toast } from "../util.js";

// The Job shape carries no amount for a payment that is still held, so a total is shown only
// when every job in the selection carries one.
function amountOf(job) {
  for (const k of ["amount", "payment_amount"]) if (typeof job[k] === "number") return job[k];
  return null;
}

export function refundSummary(jobs) {
  const n = jobs.length;
  const amounts = jobs.map(amountOf);
  const payments = `${n} payment${n === 1 ? "" : "s"}`;
  if (amounts.every((a) => a !== null)) {
    return `Refund ${payments} totalling ${fmtMoney(amounts.reduce((a, b) => a + b, 0))} at iamport.`;
  }
  return `Refund ${payments} totalling their full refundable balance at iamport (each payment's balance as iamport shows it just before the refund).`;
}

async function runEach(jobs, path, verb) {
  const results = [];
  for (const job of jobs) {
    try {
      results.push({ job, ok: true, value: await api(`/v1/jobs/${job.id}/${path}`, { method: "POST" }) });
    } catch (e) {
      results.push({ job, ok: false, error: e instanceof ApiError ? `${e.status} ${e.code || ""}`.trim() : e.message });
    }
  }
  const done = results.filter((r) => r.ok).length;
  const failed = results.length - done;
  toast(`${verb} ${done} of ${results.length}${failed ? `; ${failed} refused (${results.find((r) => !r.ok).error})` : ""}`, failed ? "error" : "ok");
  return results;
}

export async function refundJobs(jobs) {
  const ok = await confirmDialog({
    title: jobs.length === 1 ? "Refund this payment?" : `Refund ${jobs.length} payments?`,
    text: refundSummary(jobs),
    items: jobs.map((j) => `${j.payment_id}${j.merchant_uid ? ` (order ${j.merchant_uid})` : ""}`),
    warning: "The money goes back to the customers. This cannot be undone.",
    confirm: jobs.length === 1 ? "Refund 1 payment" : `Refund ${jobs.length} payments`,
  });
  return ok ? runEach(jobs, "refund", "Refund requested for") : null;
}

export async function retryJobs(jobs) {
  const n = jobs.length;
  const ok = await confirmDialog({
    title: n === 1 ? "Retry this job?" : `Retry ${n} jobs?`,
    text: `Put ${n} failed job${n === 1 ? "" : "s"} back to queued: the service looks each payment up and cancels its barcode at iamport again.`,
    items: jobs.map((j) => j.payment_id),
    warning: "",
    confirm: n === 1 ? "Retry 1 job" : `Retry ${n} jobs`,
    danger: false,
  });
  return ok ? runEach(jobs, "retry", "Retried") : null;
}

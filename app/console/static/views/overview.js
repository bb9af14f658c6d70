// Overview: counts by status, finishes per minute, the oldest waiting job, upstream health.
import { api, optional, withQuery } from "../api.js";
import { hbars, stackedBars } from "../charts.js";
import { clear, el, every, fmtAge, panel, setBadges, STATUSES, table, TERMINAL } from "../util.js";

const REFRESH_MS = 5000;
// The per-minute and upstream figures cost Postgres more than the counts: fetched less often.
const ACTIVITY_EVERY = 3;
const LINKS = { needs_refund: "#/queues/needs_refund", failed: "#/queues/failed" };

// One account's overview or every account's the key sees: `#/?account=NAME`.
function accountForm(current) {
  const input = el("input", { name: "account", id: "f-account", value: current || "", placeholder: "all accounts", autocomplete: "off" });
  return el("form", { class: "filters", id: "account-filter", onsubmit: (e) => {
    e.preventDefault();
    const name = input.value.trim();
    location.hash = name ? `#/?account=${encodeURIComponent(name)}` : "#/";
  } }, el("label", {}, "account", input), el("button", { type: "submit" }, "Show"));
}

export async function renderOverview({ view, params }) {
  const account = params.get("account") || "";
  const scope = account ? { account } : {};
  const cards = el("div", { class: "cards", id: "status-cards" });
  const oldest = el("div", { class: "stat-line", id: "oldest" });
  const finishedChart = el("div", { class: "chart-box", id: "finished-chart" });
  const legend = el("div", { class: "legend" }, TERMINAL.map((s) => el("span", {}, el("i", { class: `swatch fill-${s}` }), s.replace("_", " "))));
  const calls = el("div", { class: "chart-box", id: "upstream-calls" });
  const latency = el("div", { id: "upstream-latency" });
  const updated = el("span", { class: "muted small", id: "updated" });
  const sample = el("p", { class: "muted small", id: "upstream-sample" });
  const activityPanels = [
    panel("Jobs finished per minute (last 30 minutes)", legend, finishedChart),
    el("div", { class: "two" },
      panel("Upstream calls by outcome", calls, sample),
      panel("Upstream latency", latency)),
  ];
  view.append(
    el("div", { class: "title-row" }, el("h1", {}, account ? `Overview: ${account}` : "Overview"), updated),
    accountForm(account),
    cards,
    panel("Waiting work", oldest),
    ...activityPanels,
  );

  let round = 0;
  let activity;
  async function refresh() {
    const wantActivity = round++ % ACTIVITY_EVERY === 0;
    const [stats, fresh] = await Promise.all([api(withQuery("/v1/stats", scope)), wantActivity ? optional(withQuery("/v1/stats/activity", { ...scope, minutes: 30 })) : undefined]);
    if (wantActivity) activity = fresh;
    setBadges(stats.counts);
    clear(cards);
    for (const s of STATUSES) {
      if (!(s in stats.counts) && s === "refunded") continue;
      const n = stats.counts[s] || 0;
      const attention = (s === "needs_refund" || s === "failed") && n > 0;
      const card = el(LINKS[s] ? "a" : "div", { class: `card card-${s}${attention ? " attention" : ""}`, href: LINKS[s] || null, "data-status": s },
        el("span", { class: "card-label" }, s.replace("_", " ")),
        el("span", { class: "card-value" }, n.toLocaleString("en-US")),
        el("span", { class: "card-sub" }, s in stats.finished_last_hour ? `${stats.finished_last_hour[s]} in the last hour` : "now"));
      cards.append(card);
    }
    clear(oldest).append(
      el("span", { class: "big" }, fmtAge(stats.oldest_waiting_age_seconds)),
      el("span", { class: "muted" }, stats.oldest_waiting_age_seconds === null ? " nothing is waiting" : " since the oldest job still waiting was accepted"),
    );
    oldest.classList.toggle("alarm", (stats.oldest_waiting_age_seconds || 0) > 600);
    for (const p of activityPanels) p.hidden = activity === null;
    if (activity) {
      const series = activity.finished_per_minute.map((m) => ({ label: new Date(m.minute), counts: m.counts }));
      clear(finishedChart).append(stackedBars(series, TERMINAL, { title: "jobs finished per minute" }));
      const rows = activity.upstream_calls.map((c) => ({ label: `${c.call} ${c.outcome}`, value: c.count, cls: `fill-outcome-${healthy(c.outcome) ? "ok" : "bad"}` }));
      clear(calls).append(rows.length ? hbars(rows, { title: "upstream calls by outcome" }) : el("p", { class: "muted" }, "No upstream calls in the last 30 minutes."));
      sample.textContent = activity.upstream_sample_capped
        ? `The newest ${activity.upstream_sample_size.toLocaleString("en-US")} calls, since ${new Date(activity.upstream_since).toLocaleTimeString()}.`
        : `All ${activity.upstream_sample_size.toLocaleString("en-US")} calls of the last 30 minutes.`;
      clear(latency).append(table(
        [
          { title: "call", cell: (r) => r.call },
          { title: "calls", cell: (r) => r.count, class: "num" },
          { title: "p50 ms", cell: (r) => r.p50_ms ?? "—", class: "num" },
          { title: "p95 ms", cell: (r) => r.p95_ms ?? "—", class: "num" },
          { title: "p99 ms", cell: (r) => r.p99_ms ?? "—", class: "num" },
          { title: "max ms", cell: (r) => r.max_ms ?? "—", class: "num" },
        ],
        activity.upstream_latency,
        { empty: "No upstream calls in the last 30 minutes." },
      ));
    }
    updated.textContent = `updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000}s`;
  }

  await refresh();
  return every(REFRESH_MS, refresh);
}

// Outcomes a healthy iamport produces; everything else (timeouts, 5xx, 429, ...) is trouble.
function healthy(outcome) {
  return ["ok", "refused", "not_found"].includes(outcome);
}

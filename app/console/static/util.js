// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so data from the
// API cannot inject markup.

export const STATUSES = ["queued", "running", "retry_wait", "cancelled", "needs_refund", "refunded", "failed"];
export const TERMINAL = ["cancelled", "needs_refund", "refunded", "failed"];

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status.replace("_", " "));
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function ago(iso) {
  if (!iso) return "—";
  return `${fmtAge((Date.now() - new Date(iso).getTime()) / 1000)} ago`;
}

export function fmtMoney(amount) {
  return `₩${Number(amount).toLocaleString("en-US")}`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "—";
}

export function table(columns, rows, { empty = "Nothing here.", rowAttrs } = {}) {
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.class === "mono" ? undefined : c.class }, c.title))));
  const body = el("tbody");
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: columns.length }, empty)));
  }
  for (const row of rows) {
    const tr = el("tr", rowAttrs ? rowAttrs(row) : {}, columns.map((c) => el("td", { class: c.class }, c.cell(row))));
    body.append(tr);
  }
  return el("table", { class: "grid" }, head, body);
}

export function panel(title, ...children) {
  return el("section", { class: "panel" }, title ? el("h2", {}, title) : null, ...children);
}

let toastTimer;
export function toast(message, kind = "info") {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.className = `toast toast-${kind}`;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 5000);
}

// A modal that says exactly what will happen; resolves true only on the confirm button.
export function confirmDialog({ title, text, items = [], warning = "", confirm = "Confirm", danger = true }) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const list = clear(document.getElementById("confirm-list"));
  for (const item of items.slice(0, 10)) list.append(el("li", {}, item));
  if (items.length > 10) list.append(el("li", { class: "muted" }, `… and ${items.length - 10} more`));
  document.getElementById("confirm-warning").textContent = warning;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = confirm;
  ok.className = danger ? "primary danger" : "primary";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path ? path.split("/").map(decodeURIComponent) : [], params: new URLSearchParams(query || "") };
}

export function setBadges(counts) {
  for (const s of ["needs_refund", "failed"]) {
    const b = document.getElementById(`badge-${s}`);
    if (!b) continue;
    const n = counts[s] || 0;
    b.textContent = String(n);
    b.hidden = n === 0;
  }
}

// Run `fn` now and every `ms` until stopped; a slow answer never overlaps the next one.
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try { await fn(); } catch (e) { console.warn("refresh failed", e.message); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => { stopped = true; clearTimeout(timer); };
}

// The console's shell: sign-in, navigation by hash route, and each view's refresh timer.
import { api, ApiError, forgetKey, storedKey, storeKey, setUnauthorizedHandler } from "./api.js";
import { clear, el, parseHash } from "./util.js";
import { renderOverview } from "./views/overview.js";
import { renderJobs } from "./views/jobs.js";
import { renderJob } from "./views/job.js";
import { renderQueue } from "./views/queue.js";
import { renderDrift } from "./views/drift.js";
import { renderEvents, renderEvent } from "./views/events.js";
import { renderWebhooks, renderEndpoint } from "./views/webhooks.js";

const main = document.getElementById("main");
const session = { me: null, canWrite: false, canWebhooks: false };
let stopView = null;

function can(scope) {
  return Boolean(session.me && session.me.scopes.includes(scope));
}

function showSignIn(message) {
  stopCurrent();
  session.me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  // No `name`: even a native submit (were the handler ever skipped) could not put the key in a URL.
  const input = el("input", { type: "password", id: "key", autocomplete: "off", spellcheck: "false", placeholder: "sk_…", required: true });
  const error = el("p", { class: "error", id: "signin-error" }, message || "");
  const form = el("form", { class: "signin", id: "signin", method: "post", onsubmit: (e) => { e.preventDefault(); signIn(input.value.trim(), error); } },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Paste an API key. It is kept in this tab only (sessionStorage) and sent as a header, never in a URL or a cookie."),
    el("label", { for: "key" }, "API key"),
    input,
    error,
    el("button", { type: "submit", class: "primary" }, "Sign in"));
  clear(main).append(form);
  input.focus();
}

async function signIn(key, errorNode) {
  try {
    const me = await api("/v1/me", { key });
    storeKey(key);
    await start(me);
  } catch (e) {
    errorNode.textContent = e instanceof ApiError && e.status === 401 ? "This key is unknown or revoked." : `Could not sign in: ${e.message}`;
  }
}

async function start(me) {
  session.me = me;
  session.canWrite = can("jobs:write");
  session.canWebhooks = can("webhooks:write");
  if (!can("jobs:read")) {
    forgetKey();
    showSignIn("This key lacks the jobs:read scope the console needs.");
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("nav-webhooks").hidden = !session.canWebhooks;
  document.getElementById("who-name").textContent = me.name;
  document.getElementById("who-mode").textContent = session.canWrite ? "can act" : "read only";
  document.getElementById("who-mode").className = session.canWrite ? "mode mode-write" : "mode mode-read";
  route();
}

function stopCurrent() {
  if (stopView) stopView();
  stopView = null;
}

// Each view gets a fresh container and returns an optional stop function (timers).
async function route() {
  if (!session.me) return;
  stopCurrent();
  const { parts, params } = parseHash();
  const name = parts.length ? parts.join("/") : "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", name === a.dataset.route || name.startsWith(`${a.dataset.route}/`) || (a.dataset.route === "jobs" && parts[0] === "jobs"));
  }
  const view = el("div", { class: "view" });
  clear(main).append(view);
  const ctx = { session, params, view };
  try {
    if (parts[0] === "jobs" && parts[1]) stopView = await renderJob(ctx, parts[1]);
    else if (parts[0] === "jobs") stopView = await renderJobs(ctx);
    else if (parts[0] === "queues" && parts[1] === "drift") stopView = await renderDrift(ctx);
    else if (parts[0] === "queues" && parts[1]) stopView = await renderQueue(ctx, parts[1]);
    else if (parts[0] === "events" && parts[1]) stopView = await renderEvent(ctx, parts[1]);
    else if (parts[0] === "events") stopView = await renderEvents(ctx);
    else if (parts[0] === "webhooks" && parts[1]) stopView = await renderEndpoint(ctx, parts[1]);
    else if (parts[0] === "webhooks") stopView = await renderWebhooks(ctx);
    else stopView = await renderOverview(ctx);
  } catch (e) {
    view.append(el("p", { class: "error" }, `Could not load this page: ${e.message}`));
  }
}

setUnauthorizedHandler(() => {
  forgetKey();
  showSignIn("Your key is no longer accepted; sign in again.");
});

document.getElementById("sign-out").addEventListener("click", () => {
  forgetKey();
  showSignIn();
});
window.addEventListener("hashchange", route);

(async () => {
  if (!storedKey()) return showSignIn();
  try {
    await start(await api("/v1/me"));
  } catch {
    forgetKey();
    showSignIn();
  }
})();

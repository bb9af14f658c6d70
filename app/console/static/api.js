// The API key lives in sessionStorage only: never in a URL, a cookie or a log line. It is
// sent as `Authorization: Bearer` by fetch, which a browser never adds on its own, so a
// cross-site form cannot act with it (the API answers 401 without the header): the console's
// actions are CSRF-safe by construction.
const KEY = "stockout.console.key";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = problem ? problem.code : undefined;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

// Query parameters are built here from filters only; the key never joins them.
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export async function api(path, { method = "GET", body, key } = {}) {
  const headers = { Accept: "application/json" };
  const secret = key || storedKey();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (res.status === 204) return null;
  let data = null;
  const type = res.headers.get("content-type") || "";
  if (type.includes("json")) data = await res.json();
  if (!res.ok) {
    if (res.status === 401 && !key) onUnauthorized();
    throw new ApiError(res.status, data);
  }
  return data;
}

// GET that answers null when the server has no such endpoint (a feature not deployed yet).
export async function optional(path) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

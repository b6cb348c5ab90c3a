// The JSON API client: every error becomes an ApiError with the server's one-line detail.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

function readable(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return JSON.stringify(detail);
}

/** GET or POST JSON; throws ApiError with a readable message. */
export async function api(url, options = {}) {
  let res;
  try {
    res = await fetch(url, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    throw new ApiError(0, "the explorer server cannot be reached — is `cnnscope serve` still running?");
  }
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) {
    const detail = body && body.detail !== undefined ? readable(body.detail) : `HTTP ${res.status}`;
    throw new ApiError(res.status, detail);
  }
  return body;
}

/** Build a query string from an object, skipping null/undefined. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

let modelPromise = null;
/** The served model (cached for the page's lifetime). */
export function getModel() {
  if (!modelPromise) {
    modelPromise = api("/api/models").then((m) => ({ ...m.models[0], max_upload_mb: m.max_upload_mb }));
  }
  return modelPromise;
}

export const enc = encodeURIComponent;

/** The engine's backward rules (/api/models `rules`) and the names the pages show. */
export const RULES = [
  ["guided", "Guided"],
  ["gradient", "Gradient"],
  ["deconvnet", "Deconvnet"],
  ["guided_neg", "Guided neg"],
];

/** URL of a page. */
export const pages = {
  gallery: () => "/",
  image: (id, model) => `/images/${enc(id)}${query({ model })}`,
  tree: (id, params) => `/images/${enc(id)}/tree${query(params)}`,
  unit: (unit, params) => `/units/${enc(unit.replace(/#/g, "~"))}${query(params)}`,
};

/** Short display of a unit: layer and channel apart. */
export function splitUnit(unit) {
  const i = unit.lastIndexOf(":");
  return { layer: unit.slice(0, i), channel: unit.slice(i + 1) };
}

// The JSON API client: every error becomes an ApiError with the server's one-line detail.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** The one-line message of an error: the server's detail for an ApiError. */
export function errorText(err) {
  return err instanceof ApiError ? err.detail : String(err);
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

let vocabularyPromise = null;
let vocabularyLoaded = null;
/** The library's vocabulary (/api/vocabulary: rules, gains, scorings, signs, methods, the
 *  call suffix and the page URLs), fetched once; main.js awaits it before any page runs. */
export function getVocabulary() {
  if (!vocabularyPromise) vocabularyPromise = api("/api/vocabulary").then((v) => (vocabularyLoaded = v));
  return vocabularyPromise;
}

/** The loaded vocabulary (synchronous: for code that runs once a page has started). */
export function vocabulary() {
  if (!vocabularyLoaded) throw new Error("the vocabulary is not loaded yet: await getVocabulary() first");
  return vocabularyLoaded;
}

/** The option each page starts with where its URL names none: the library's defaults, as
 *  the vocabulary serves them (rule, gain, scoring, sign, k, method, order, normalize,
 *  clusters); the server's defaults are the same. */
export function defaults() {
  return vocabulary().defaults;
}

/** The names of one vocabulary list ("rules", "scorings", "gains", "signs", "methods",
 *  "orders", "normalizations", "sources"). */
export function termNames(kind) {
  return vocabulary()[kind].map((t) => t.name);
}

/** [name, title] pairs of one vocabulary list for a picker, its page default first. */
export function termChoices(kind, first = null) {
  const pairs = vocabulary()[kind].map((t) => [t.name, t.title]);
  const i = pairs.findIndex(([name]) => name === first);
  return i > 0 ? [pairs[i], ...pairs.slice(0, i), ...pairs.slice(i + 1)] : pairs;
}

/** `value` if the vocabulary list `kind` has it, else `fallback`. */
export function known(kind, value, fallback) {
  return termNames(kind).includes(value) ? value : fallback;
}

/** A unit's name in URL form: "blocks.1:3#2" -> "blocks.1:3~2" (the call suffix). */
export function unitToUrl(unit) {
  const { name, url } = vocabulary().call_suffix;
  return unit.split(name).join(url);
}

/** A unit's name back from its URL form: "blocks.1:3~2" -> "blocks.1:3#2". */
export function unitFromUrl(text) {
  const { name, url } = vocabulary().call_suffix;
  return text.split(url).join(name);
}

/** The URL of the page `name` (a key of the vocabulary's `pages`): its placeholders filled
 *  from `fill` ({image} an image id, {unit} a unit name), then the query `params`. */
export function pageUrl(name, fill = {}, params = {}) {
  const template = vocabulary().pages[name];
  if (template === undefined) throw new Error(`no page named ${name}`);
  const path = template.replace(/\{(\w+)\}/g, (_, key) => enc(key === "unit" ? unitToUrl(fill[key]) : fill[key]));
  return `${path}${query(params)}`;
}

/** URL of a page. */
export const pages = {
  gallery: () => pageUrl("gallery"),
  image: (id, model) => pageUrl("image", { image: id }, { model }),
  tree: (id, params) => pageUrl("tree", { image: id }, params),
  layers: (id, params) => pageUrl("layers", { image: id }, params),
  unit: (unit, params) => pageUrl("unit", { unit }, params),
};

/** Short display of a unit: layer and channel apart. */
export function splitUnit(unit) {
  const i = unit.lastIndexOf(":");
  return { layer: unit.slice(0, i), channel: unit.slice(i + 1) };
}

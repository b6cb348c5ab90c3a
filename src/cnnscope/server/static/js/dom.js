// Small DOM helpers: element builders, toasts and error cards. No framework.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an HTML element: h("a", {href: "/", class: "x", onclick: fn}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Build an SVG element. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "text") {
      el.textContent = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of el. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A transient message at the bottom right; kind: "info" | "error". */
export function toast(message, kind = "info", ms = 5000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(item);
  setTimeout(() => item.classList.add("toast-out"), ms);
  setTimeout(() => item.remove(), ms + 400);
}

/** A readable error block for the page. */
export function errorCard(title, detail, actions = []) {
  return h(
    "section",
    { class: "error-card", role: "alert" },
    h("h2", {}, title),
    h("p", { class: "error-detail" }, detail),
    actions.length ? h("div", { class: "error-actions" }, actions) : null,
  );
}

/** Set the breadcrumb trail: items are [label, href] or [label]. */
export function crumbs(items) {
  const nav = document.getElementById("crumbs");
  if (!nav) return;
  mount(
    nav,
    items.map(([label, href], i) => [
      i ? h("span", { class: "crumb-sep", "aria-hidden": "true" }, "›") : null,
      href ? h("a", { href }, label) : h("span", { class: "crumb-here" }, label),
    ]),
  );
}

/** A spinner element. */
export const spinner = (extra = "") => h("span", { class: `spinner ${extra}`.trim(), "aria-label": "loading" });

/** Format a probability or fraction as a percentage. */
export function pct(value, digits = 1) {
  if (!Number.isFinite(value)) return "–";
  return `${(value * 100).toFixed(digits)}%`;
}

/** A compact number: 0.00123 -> 1.23e-3, 12.5 -> 12.5. */
export function num(value) {
  if (!Number.isFinite(value)) return "–";
  const a = Math.abs(value);
  if (a === 0) return "0";
  if (a >= 1000 || a < 0.01) return value.toExponential(2);
  return value.toPrecision(3);
}

/** An <img> that shows a shimmer until loaded and a readable note when it fails. */
export function lazyImage(src, { alt = "", cls = "", width, height, onFail } = {}) {
  const wrap = h("div", { class: `img-frame loading ${cls}`.trim() });
  const img = h("img", { src, alt, width, height, decoding: "async", draggable: "false" });
  img.addEventListener("load", () => wrap.classList.remove("loading"));
  img.addEventListener("error", async () => {
    wrap.classList.remove("loading");
    wrap.classList.add("failed");
    let detail = "could not load the image";
    try {
      const res = await fetch(src);
      const body = await res.json();
      detail = body.detail || detail;
    } catch (_) {
      /* keep the generic message */
    }
    img.remove();
    wrap.append(h("div", { class: "img-error" }, detail));
    if (onFail) onFail(detail);
  });
  wrap.append(img);
  return wrap;
}

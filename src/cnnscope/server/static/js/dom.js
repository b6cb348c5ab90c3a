// Small DOM helpers and the widgets every page shares: element builders, toasts, error
// cards, segmented controls, selects, switches, copy buttons and parent-unit links. No
// framework.

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

/** A segmented control: `options` are [value, label] pairs; `onChange(value)` on a click. */
export function segmented(options, current, onChange, label) {
  const group = h("div", { class: "segmented", role: "radiogroup", "aria-label": label });
  for (const [value, text] of options) {
    const b = h("button", { type: "button", role: "radio", "aria-checked": String(value === current), "data-value": value }, text);
    b.addEventListener("click", () => {
      for (const other of group.children) other.setAttribute("aria-checked", String(other === b));
      onChange(value);
    });
    group.append(b);
  }
  return group;
}

/** A <select>: `options` are [value, label] pairs; `onChange(value)` gets the option's value
 *  as a string; `attrs` (id, aria-label, title) go on the element. */
export function choice(options, current, onChange, attrs = {}) {
  const sel = h(
    "select",
    { class: "select", ...attrs },
    options.map(([value, text]) => h("option", { value, selected: String(value) === String(current) }, text)),
  );
  sel.addEventListener("change", () => onChange(sel.value));
  return sel;
}

/** A labelled on/off switch (a checkbox); `onChange(checked)`. */
export function toggleSwitch(id, text, checked, onChange, { title, accent = false } = {}) {
  const input = h("input", { type: "checkbox", id, checked });
  input.addEventListener("change", () => onChange(input.checked));
  return h("label", { class: `switch${accent ? " switch-accent" : ""}`, for: id, title }, input, h("span", { class: "switch-track" }), text);
}

/** Copy `text` to the clipboard and say `done`; where the clipboard is refused, a prompt
 *  (titled `ask`) shows the text to copy by hand. */
export async function copyText(text, done, ask = "Copy this:") {
  try {
    await navigator.clipboard.writeText(text);
    toast(done);
  } catch (_) {
    window.prompt(ask, text);
  }
}

/** The "Copy link" button of a page whose URL restores its view. */
export function copyLinkButton() {
  const b = h("button", { type: "button", class: "btn btn-ghost", id: "copy-link", title: "copy a link to this view" }, "Copy link");
  b.addEventListener("click", () => copyText(window.location.href, "Link copied: it restores this exact view", "Copy this link:"));
  return b;
}

/** A link to a parent unit (the drill-up answers): its reconstruction, name, label, weight. */
export function parentLink(p, href, title) {
  return h(
    "a",
    { class: `parent-item${p.sign === "neg" ? " neg" : ""}`, href, title },
    lazyImage(p.reconstruction, { alt: p.unit, cls: "parent-img" }),
    h("span", {}, h("code", {}, p.unit), p.label ? h("span", { class: "muted small" }, ` ${p.label.split(",")[0]}`) : null, h("span", { class: "muted small" }, ` · ${num(p.weight)}`)),
  );
}

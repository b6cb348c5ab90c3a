// The feature-visualization slot: shows the rendered picture, or its progress, or a
// button that starts the rendering in the background (it is cached once done).

import { api, enc } from "./api.js";
import { h, lazyImage, mount } from "./dom.js";

const POLL_MS = 2000;

/** A slot element for the feature visualization of `unit`. */
export function visualizationSlot(unit) {
  const box = h("div", { class: "vis-slot", "data-unit": unit });
  const url = `/api/units/${enc(unit.replace(/#/g, "~"))}/visualization`;
  let timer = null;

  const show = (state) => {
    clearTimeout(timer);
    if (!box.isConnected && timer !== null) return; // the panel moved on
    if (state.state === "done") {
      mount(box, lazyImage(state.image, { alt: `feature visualization of ${unit}`, cls: "panel-img" }));
      return;
    }
    if (state.state === "running") {
      const pct = Math.round(state.progress * 100);
      mount(
        box,
        h("div", { class: "slot" }, h("div", { class: "progress" }, h("span", { style: `width:${Math.max(3, pct)}%` })), `Rendering an image that excites ${unit}… ${pct}%`),
      );
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    const start = h("button", { type: "button", class: "btn" }, "Render it");
    start.addEventListener("click", async () => {
      start.disabled = true;
      try {
        show(await api(url, { method: "POST" }));
      } catch (err) {
        mount(box, h("div", { class: "slot status-error" }, err.message));
      }
    });
    mount(
      box,
      h(
        "div",
        { class: "slot" },
        state.state === "failed" ? h("p", { class: "status-error" }, `Rendering failed: ${state.detail}`) : h("p", {}, "Not computed yet. Rendering runs in the background when the model is idle, and is kept for next time."),
        start,
      ),
    );
  };

  const poll = async () => {
    try {
      show(await api(url));
    } catch (err) {
      mount(box, h("div", { class: "slot status-error" }, err.message));
    }
  };
  poll();
  return box;
}

// The feature-visualization slot: asks the server to render the unit's picture in the
// background (once; it is cached), shows its progress, then the picture. The page never
// waits on it: the rendering runs on the server's background lane, not its request worker.
// Polling is what tells the server that the picture is still wanted: the unit polled last
// is rendered first, and a slot that left the page stops polling, so its job is dropped.

import { api, enc, unitToUrl } from "./api.js";
import { h, lazyImage, mount } from "./dom.js";

const POLL_MS = 1000; // the server overtakes a job nobody polled for 3 s (BackgroundLane.recent_s)

/** A slot element for the feature visualization of `unit` (rendering starts at once). */
export function visualizationSlot(unit, model) {
  const box = h("div", { class: "vis-slot", "data-unit": unit });
  if (!model.synthesis) {
    return mount(box, h("div", { class: "slot" }, "Feature synthesis is not available in this version of cnnscope."));
  }
  const url = `/api/units/${enc(unitToUrl(unit))}/visualization`;
  let started = false;

  const start = async () => {
    try {
      show(await api(url, { method: "POST" }));
    } catch (err) {
      mount(box, h("div", { class: "slot status-error" }, err.message));
    }
  };

  const show = (state) => {
    if (started && !box.isConnected) return; // the panel moved on: stop polling
    started = true;
    if (state.state === "done") {
      mount(box, lazyImage(state.image, { alt: `feature visualization of ${unit}`, cls: "panel-img" }));
      return;
    }
    if (state.state === "none") {
      start();
      return;
    }
    if (state.state === "failed") {
      const retry = h("button", { type: "button", class: "btn" }, "Try again");
      retry.addEventListener("click", () => {
        retry.disabled = true;
        start();
      });
      mount(box, h("div", { class: "slot" }, h("p", { class: "status-error" }, `Rendering failed: ${state.detail}`), retry));
      return;
    }
    const pct = Math.round(state.progress * 100);
    const text = state.state === "queued" ? `Queued: an image that excites ${unit} is rendered as soon as the job before it steps aside or ends.` : `Rendering an image that excites ${unit}… ${pct}%`;
    mount(box, h("div", { class: "slot" }, h("div", { class: "progress" }, h("span", { style: `width:${Math.max(3, pct)}%` })), text));
    setTimeout(poll, POLL_MS);
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

// The dataset-examples slot, and the banner that shows the gallery index being built.
// On the first start the server builds the gallery's index in the background: until it is
// ready, slots show its progress and fill in by themselves when it is done.

import { api, enc } from "./api.js";
import { h, lazyImage, mount } from "./dom.js";

const POLL_MS = 2000;
let current = null; // one request for the index state at a time, shared by every slot

function indexState() {
  if (!current) current = api("/api/index").finally(() => setTimeout(() => (current = null), POLL_MS / 2));
  return current;
}

/** Call `onState(state)` now and every POLL_MS while the index is building and `alive()`.
 *  Exported for pages that wait for the index too (one poller, one shared request). */
export function watch(onState, alive) {
  const tick = async () => {
    let state;
    try {
      state = await indexState();
    } catch (err) {
      state = { state: "failed", detail: err.message };
    }
    if (!alive()) return;
    onState(state);
    if (state.state === "building") setTimeout(tick, POLL_MS);
  };
  tick();
}

function progressBar(state) {
  const pct = state.total ? Math.round((100 * state.done) / state.total) : 0;
  return h("div", { class: "progress" }, h("span", { style: `width:${Math.max(3, pct)}%` }));
}

function buildingText(state) {
  return state.total ? `${state.done} of ${state.total} images done` : "starting";
}

/** A slot with the dataset examples of `unit` (a grid of patches and reconstructions). */
export function examplesSlot(unit, { cls = "panel-img" } = {}) {
  const box = h("div", { class: "examples-slot", "data-unit": unit });
  let started = false;
  watch(
    (state) => {
      if (state.state === "ready") {
        mount(box, lazyImage(`/api/units/${enc(unit.replace(/#/g, "~"))}/examples.png`, { alt: `dataset examples of ${unit}`, cls }));
      } else if (state.state === "building") {
        mount(box, h("div", { class: "slot" }, progressBar(state), `Indexing the gallery for dataset examples (${buildingText(state)}); they appear here when it is done.`));
      } else if (state.state === "failed") {
        mount(box, h("div", { class: "slot status-error" }, `The dataset index could not be built: ${state.detail}`));
      } else {
        mount(box, h("div", { class: "slot" }, "No dataset index: start the server with ", h("code", {}, "--index INDEX"), " (see cnnscope index) to see this unit's top dataset patches."));
      }
      started = true;
    },
    () => !started || box.isConnected,
  );
  return box;
}

/** A banner that shows the gallery index's progress while it is built, then goes away. */
export function indexBanner() {
  const box = h("div", { class: "index-banner", role: "status", hidden: true });
  let started = false;
  watch(
    (state) => {
      started = true;
      if (state.state !== "building") {
        box.hidden = true;
        return;
      }
      box.hidden = false;
      mount(box, h("strong", {}, "First start: "), `indexing the gallery for dataset examples in the background (${buildingText(state)}). Everything else works meanwhile.`, progressBar(state));
    },
    () => !started || box.isConnected,
  );
  return box;
}

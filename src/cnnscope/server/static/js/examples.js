// The dataset-examples slot, and the banner that shows the gallery index being built.
// On the first start the server builds the gallery's index in the background: until it is
// ready, slots show its progress and fill in by themselves when it is done.

import { api, enc, splitUnit, unitFromUrl, unitToUrl } from "./api.js";
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

/** Whether the index covers `unit`'s layer (older servers do not list their layers). */
export function covers(state, unit) {
  return !state.layers || state.layers.includes(splitUnit(unitFromUrl(unit).split("@")[0]).layer);
}

/** The flag that points the examples at the user's own photos. */
export const OWN_PHOTOS_FLAG = "cnnscope serve --examples-from DIR";

/** What the index is made of, said plainly: "240 images from 8 photos (…)" and how to use
 *  your own; `short`: one line for the popover. */
export function indexNote(state, short = false) {
  if (!state.images) return null;
  const gallery = state.source === "gallery";
  if (short) {
    const what = gallery ? `Small index: ${state.images} images from ${state.photos} built-in photos.` : `${state.images} images of ${state.source}.`;
    return h("p", { class: "examples-about muted small" }, what, gallery ? [" Your photos: ", h("code", {}, OWN_PHOTOS_FLAG)] : null);
  }
  const what = gallery
    ? `From a small index: ${state.images} images made from the ${state.photos} built-in gallery photos (flips, crops and scales of each), so the examples repeat the same few scenes.`
    : `From ${state.images} images of ${state.source}.`;
  return h(
    "p",
    { class: "examples-about muted small" },
    what,
    gallery ? [" For examples from your own photos, start the server with ", h("code", {}, OWN_PHOTOS_FLAG), "."] : null,
  );
}

/**
 * A slot with the dataset examples of `unit` (a grid of patches and reconstructions).
 * `onShow(box)` is called once the slot has something to show (the grid loaded, or a
 * message); `onHide()` when there is nothing to show (no examples for this unit's layer,
 * or the grid failed): a popover opens on the first and never shows empty.
 */
export function examplesSlot(unit, { cls = "panel-img", onShow = null, onHide = null, about = true } = {}) {
  const box = h("div", { class: "examples-slot", "data-unit": unit });
  let started = false;
  const shown = () => onShow && onShow(box);
  watch(
    (state) => {
      started = true;
      if (state.state === "ready" && !covers(state, unit)) {
        const layer = splitUnit(unit).layer;
        mount(box, h("div", { class: "slot" }, `No dataset examples for ${layer}: the index covers ${state.layers.length} other layers${layer === "logits" ? " (class logits are not indexed)" : ""}.`));
        if (onHide) onHide();
        else shown();
      } else if (state.state === "ready") {
        const img = lazyImage(`/api/units/${enc(unitToUrl(unit))}/examples.png`, { alt: `dataset examples of ${unit}`, cls, onFail: () => onHide && onHide() });
        img.querySelector("img").addEventListener("load", shown);
        mount(box, img, about ? indexNote(state, about === "short") : null);
      } else if (state.state === "building") {
        mount(box, h("div", { class: "slot" }, progressBar(state), `Indexing images for dataset examples (${buildingText(state)}); they appear here when it is done.`));
        shown();
      } else if (state.state === "failed") {
        mount(box, h("div", { class: "slot status-error" }, `The dataset index could not be built: ${state.detail}`));
        shown();
      } else {
        mount(box, h("div", { class: "slot" }, "No dataset index: start the server with ", h("code", {}, OWN_PHOTOS_FLAG), " (your photos) or ", h("code", {}, "--index INDEX"), " (see cnnscope index) to see this unit's top dataset patches."));
        shown();
      }
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
      mount(box, h("strong", {}, "First start: "), `indexing images for dataset examples in the background (${buildingText(state)}). Everything else works meanwhile.`, progressBar(state));
    },
    () => !started || box.isConnected,
  );
  return box;
}

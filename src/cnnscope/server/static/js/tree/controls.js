// The tree page's controls: the toolbar of options, the note on the chosen rule, and the
// strip below the drawing (zoom buttons and legend, never over a node).

import { defaults, pages, termChoices, vocabulary } from "../api.js";
import { choice, copyLinkButton, h, segmented, toggleSwitch } from "../dom.js";
import { KS } from "./state.js";

// What each rule shows on this page, said where the rule is chosen (a rule without a note
// here is explained by its help from the vocabulary).
const RULE_NOTES = {
  guided: "Guided: only positive gradients pass each ReLU. Each picture shows what drives its node; zoom frames where the node carries its evidence.",
  gradient: "Gradient: the true gradient, both signs (noisy, but faithful to the model).",
  deconvnet:
    "Deconvnet ignores the image at every ReLU, and this model has no max-pooling (whose switches are deconvnet's only other link to the image): its pictures are nearly the same checkerboard for every image. They show the pattern the weights prefer, not what this image contains.",
  guided_neg: "Guided neg: only negative gradients pass. The root's children are the units that lower it; below them, what drives those units.",
};

/** The note under the toolbar that says what the chosen rule shows. */
export function ruleNote() {
  const el = h("p", { id: "rule-note" });
  return {
    el,
    show(rule) {
      el.className = `rule-note rule-note-${rule}`;
      const term = vocabulary().rules.find((t) => t.name === rule);
      el.textContent = RULE_NOTES[rule] ?? (term ? `${term.title}: ${term.help}.` : "");
    },
  };
}

/** The toolbar: `set(key, value)` on an option that rebuilds the tree, `zoom(on)` for the
 *  pictures' zoom (no rebuild). */
export function toolbar({ image, info, model, opts }, { set, zoom }) {
  const ruleSeg = segmented(termChoices("rules", defaults().rule), opts.rule, (v) => set("rule", v), "backward rule");
  ruleSeg.id = "opt-rule";
  const scoringSeg = segmented(termChoices("scorings", defaults().scoring), opts.scoring, (v) => set("scoring", v), "scoring");
  scoringSeg.id = "opt-scoring";
  const kSel = choice(
    KS.map((n) => [n, `k = ${n}`]),
    opts.k,
    (v) => set("k", Number(v)),
    { id: "opt-k", "aria-label": "children per node" },
  );
  const negTip = "also show the children that work against the rule's evidence (under guided: the inhibitory ones; under guided neg: those that raise the root)";
  return h(
    "div",
    { class: "toolbar" },
    h(
      "a",
      { class: "toolbar-image", href: pages.image(image, model.name), title: info.name },
      h("img", { src: info.thumbnail, alt: "", class: "toolbar-thumb" }),
      h("span", { class: "toolbar-name" }, info.name),
    ),
    h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Rule"), ruleSeg),
    h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Scores"), scoringSeg),
    h("div", { class: "toolbar-group" }, kSel),
    toggleSwitch("opt-neg", "Both signs", opts.neg, (on) => set("neg", on), { title: negTip }),
    toggleSwitch("opt-zoom", "Zoom", opts.zoom, zoom, { title: "zoom each picture on the cells where its node carries its evidence", accent: true }),
    h("div", { class: "toolbar-spacer" }),
    copyLinkButton(),
  );
}

/** The strip below the drawing: zoom buttons (on `pz`, a PanZoom) and the legend. */
export function footer(pz) {
  const zoomBtn = (label, title, fn) => {
    const b = h("button", { type: "button", class: "zoom-btn", title, "aria-label": title }, label);
    b.addEventListener("click", fn);
    return b;
  };
  return h(
    "div",
    { class: "tree-footer" },
    h("div", { class: "zoom-controls" }, zoomBtn("+", "zoom in", () => pz.zoomBy(1.2)), zoomBtn("−", "zoom out", () => pz.zoomBy(1 / 1.2)), zoomBtn("⤢", "fit the tree", () => pz.fit())),
    h(
      "div",
      { class: "legend" },
      vocabulary().signs.map((t) => h("span", { class: `lg lg-${t.name}`, title: t.help }, t.title.toLowerCase())),
      h("span", { class: "lg lg-faith" }, "the node's value → with its shown children zeroed · with as many random ones"),
    ),
  );
}

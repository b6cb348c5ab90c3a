// The tree's side panel: the selected node's pictures, actions and facts, its path from the
// root, the units above it (drill up), its feature visualization and dataset examples.

import { api, enc, errorText, pageUrl, pages, query, unitFromUrl, unitToUrl } from "../api.js";
import { h, lazyImage, mount, num, parentLink, spinner } from "../dom.js";
import { examplesSlot } from "../examples.js";
import { visualizationSlot } from "../vis.js";
import { faithWords, shareWords } from "./words.js";

/** A line that links the class page of the image's predicted class, shown once known. */
function classGraphLine(image) {
  const link = h("a", { id: "class-graph-link", title: "what the model uses for this class across many images" });
  const line = h("p", { class: "muted small", hidden: true }, "Across many images: ", link);
  api(`/api/images/${enc(image)}/predictions?k=1`)
    .then((got) => {
      const top = got.predictions[0];
      link.href = pageUrl("graph", { class: top.index });
      link.textContent = `class graph of ${top.label.split(",")[0]}`;
      line.hidden = false;
    })
    .catch(() => {}); // no line: the tree page works without it
  return line;
}

export class Panel {
  /** The panel of a TreeState; `actions`: select, toggle, remove, unitPage (a URL). */
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.el = h("aside", { class: "tree-panel", id: "tree-panel", "aria-label": "selected node" });
    this.drill = null;
    this.classLine = classGraphLine(state.image);
  }

  // The answer is kept in this.drill, not only in the DOM: the panel is re-rendered while
  // the (slow) request runs (a faithfulness label arriving, a rebuild ending).
  async drillUp(node) {
    const st = this.state;
    const { k, rule } = st.opts;
    const drill = { path: node.path, k, rule, answer: null, error: null };
    this.drill = drill;
    this.actions.select(node);
    try {
      drill.answer = await api(`/api/images/${enc(st.image)}/parents${query({ unit: unitToUrl(node.unit), k, rule, model: st.model.name })}`);
    } catch (err) {
      drill.error = errorText(err);
    }
    const box = this.el.querySelector(".parents-box");
    if (box && this.drill === drill) mount(box, this.parentsContent(st.selected || st.root));
  }

  /** The drill-up box of the panel of ``n``: a prompt, a spinner, the parents or an error. */
  parentsContent(n) {
    const d = this.drill;
    const st = this.state;
    if (!d || d.path !== n.path || d.k !== st.opts.k || d.rule !== st.opts.rule) {
      return h("p", { class: "muted small" }, "Which units of the layer above does this one feed most? Use ", h("strong", {}, "Drill up"), ".");
    }
    if (d.error) return h("p", { class: "status-error" }, d.error);
    const ans = d.answer;
    if (!ans) return h("div", { class: "loading-block" }, spinner(), " Finding the units above…");
    if (!ans.parents.length) {
      const why = ans.layer ? `On this image it feeds no unit of ${ans.layer}: the path from it upward is silent here.` : `${n.layer} is the top of the chain: nothing above it.`;
      return h("p", { class: "muted small" }, why);
    }
    return [
      h("p", { class: "muted small" }, `Units of ${ans.layer} that ${n.unit} feeds most. Open one as a new root:`),
      h(
        "div",
        { class: "parents-list" },
        ans.parents.map((p) => parentLink(p, pages.tree(st.image, { model: st.model.name, rule: d.rule, path: p.path, open: p.path.split("/")[0] }), `re-root the tree at ${p.unit}`)),
      ),
    ];
  }

  render() {
    const st = this.state;
    const act = this.actions;
    const n = st.selected || st.root;
    const spatial = !n.label && n.layer !== "logits";
    const pathParts = n.path.split("/");
    const crumbsEls = pathParts.map((u, i) => {
      const p = pathParts.slice(0, i + 1).join("/");
      const target = st.find(p);
      return h("button", { type: "button", class: `path-chip${i === pathParts.length - 1 ? " current" : ""}`, onclick: () => target && act.select(target) }, unitFromUrl(u));
    });
    const actions = [];
    if (!n.leaf) {
      const b = h("button", { type: "button", class: "btn btn-primary", id: "panel-toggle" }, n.expanded ? "Collapse" : n.loading ? "Expanding…" : "Expand");
      b.addEventListener("click", () => act.toggle(n));
      actions.push(b);
    }
    const up = h("button", { type: "button", class: "btn", id: "panel-drill" }, "Drill up");
    up.addEventListener("click", () => this.drillUp(n));
    actions.push(up, h("a", { class: "btn btn-ghost", href: act.unitPage(n) }, "Unit page"));
    if (n.parent) {
      const rm = h("button", { type: "button", class: "btn btn-ghost" }, "Remove");
      rm.addEventListener("click", () => act.remove(n));
      actions.push(rm);
    }
    const f = n.faith && n.faith !== "loading" && !n.faith.error ? n.faith : null;
    const activation = `/api/images/${enc(st.image)}/activation.png${query({ unit: unitToUrl(n.unit), model: st.model.name })}`;
    mount(
      this.el,
      h("div", { class: "panel-head" }, h("h2", {}, n.label ? n.label.split(",")[0] : h("code", {}, n.unit)), n.label ? h("code", { class: "muted" }, n.unit) : null),
      h(
        "div",
        { class: "panel-images" },
        h("figure", {}, lazyImage(n.recon, { alt: `reconstruction of ${n.unit}`, cls: "panel-img" }), h("figcaption", {}, "Reconstruction along its path (whole image)")),
        spatial ? h("figure", {}, lazyImage(activation, { alt: `activation of ${n.unit}`, cls: "panel-img" }), h("figcaption", {}, "Where it fires")) : null,
      ),
      h("div", { class: "panel-actions" }, actions),
      this.classLine,
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Layer"),
        h("dd", {}, h("code", {}, n.layer)),
        h("dt", {}, "Channel"),
        h("dd", {}, String(n.channel)),
        n.parent
          ? [
              h("dt", {}, "Weight"),
              h("dd", {}, n.share === null ? "on the path (not in the top k)" : [`${shareWords(n)} `, h("code", {}, n.parent.unit), h("span", { class: "muted small" }, ` (mean A·G = ${num(n.weight)})`)]),
            ]
          : null,
        f ? [h("dt", {}, "Faithfulness"), h("dd", { id: "panel-faith" }, faithWords(f))] : null,
      ),
      h("div", { class: "path-chips", "aria-label": "path from the root" }, crumbsEls),
      h("section", { class: "panel-section" }, h("h3", {}, "Drill up"), h("div", { class: "parents-box" }, this.parentsContent(n))),
      h("section", { class: "panel-section" }, h("h3", {}, "Feature visualization"), visualizationSlot(n.unit, this.state.model)),
      h("section", { class: "panel-section" }, h("h3", {}, "Dataset examples"), examplesSlot(n.unit)),
    );
  }
}

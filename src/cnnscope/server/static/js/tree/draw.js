// The tree's SVG: one card per visible node (title, share, picture, buttons, knob), the
// edges between them, the faithfulness labels and the layer titles of each row.

import { num, pct, s } from "../dom.js";
import { GAP_Y, NODE_H, NODE_W, edgePath, layout } from "./layout.js";
import { clip, faithWords, middleClip, shareWords } from "./words.js";

const IMG = NODE_W - 16;

/** The drawing of a TreeState; `actions` are the page's answers to the cards' buttons:
 *  toggle, select, drillUp, remove, unitPage (a URL), and `hover` ({start, end, on}). */
export class TreeDrawing {
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.els = new Map();
    this.lay = null;
    this.svg = s("svg", { class: "tree-svg", id: "tree-svg", role: "tree", "aria-label": "neuron tree" });
    this.viewport = s("g", { class: "viewport" });
    this.gColumns = s("g", { class: "columns" });
    this.gEdges = s("g", { class: "edges" });
    this.gNodes = s("g", { class: "nodes" });
    this.gLabels = s("g", { class: "faith-labels" });
    this.viewport.append(this.gColumns, this.gEdges, this.gNodes, this.gLabels);
    this.svg.append(defs(), this.viewport);
  }

  /** Drop every card (a rebuild draws new ones). */
  clear() {
    this.actions.hover.end();
    for (const el of this.els.values()) el.remove();
    this.els.clear();
  }

  /** Lay the visible tree out and draw it (cards are kept while their node is). */
  draw() {
    const st = this.state;
    this.lay = layout(st.root, (n) => st.visibleChildren(n));
    const live = new Set();
    for (const node of this.lay.nodes) {
      live.add(node.path);
      let el = this.els.get(node.path);
      if (!el || el.__node !== node) {
        if (el) el.remove();
        el = this.nodeElement(node);
        this.els.set(node.path, el);
        this.gNodes.append(el);
      }
      el.setAttribute("transform", `translate(${node.x},${node.y})`);
      this.decorate(node, el);
    }
    for (const [path, el] of this.els) {
      if (!live.has(path)) {
        if (this.actions.hover.on(el)) this.actions.hover.end();
        el.remove();
        this.els.delete(path);
      }
    }
    this.drawEdges();
    this.drawLabels();
    this.drawColumns();
  }

  /** Redraw one node's card (its state changed). */
  update(node) {
    const el = this.els.get(node.path);
    if (el) this.decorate(node, el);
  }

  /** Point every card at its picture again (the Zoom option changed). */
  refreshImages() {
    for (const el of this.els.values()) el.querySelector(".node-img").setAttribute("href", this.state.nodeImage(el.__node));
  }

  drawEdges() {
    const parts = [];
    for (const node of this.lay.nodes) {
      const kids = this.state.visibleChildren(node);
      if (!kids.length) continue;
      for (const kid of kids) {
        const share = kid.share === null ? 0.1 : Math.sqrt(kid.share);
        const cls = `edge ${kid.sign === "neg" ? "edge-neg" : "edge-pos"}${kid.pinned ? " edge-pinned" : ""}`;
        parts.push(
          s(
            "path",
            { class: cls, d: edgePath(node, kid), "stroke-width": (1.25 + 4.5 * share).toFixed(2) },
            s("title", {}, kid.weight === null ? `${kid.unit}: on the shared path, not among the top ${this.state.opts.k}` : `${node.unit} ← ${kid.unit}: ${shareWords(kid)}`),
          ),
        );
      }
    }
    this.gEdges.replaceChildren(...parts);
  }

  drawLabels() {
    const parts = [];
    for (const node of this.lay?.nodes || []) {
      if (!this.state.visibleChildren(node).length || !node.faith) continue;
      const x = node.x + NODE_W / 2 + 17;
      const y = node.y + NODE_H + 3;
      const f = node.faith;
      let text;
      let title;
      let cls = "faith";
      if (f === "loading") {
        text = "faithfulness…";
        title = "zeroing the shown children";
        cls += " faith-loading";
      } else if (f.error) {
        text = "faithfulness n/a";
        title = f.error;
        cls += " faith-error";
      } else {
        text = `${num(f.value)} → ${num(f.zeroed)} (rnd ${num(f.random_zeroed)})`;
        title = faithWords(f);
        const beyond = Math.abs(f.drop - f.random_drop) > 2 * f.random_std && Math.abs(f.drop) > Math.abs(f.random_drop);
        cls += beyond ? " faith-good" : " faith-weak";
      }
      const w = 150;
      parts.push(
        s(
          "g",
          { class: cls, transform: `translate(${x},${y})`, "data-path": node.path },
          s("title", {}, title),
          s("rect", { width: w, height: 22, rx: 11 }),
          s("text", { x: w / 2, y: 15, "text-anchor": "middle" }, text),
        ),
      );
    }
    this.gLabels.replaceChildren(...parts);
  }

  drawColumns() {
    const seen = new Map();
    for (const n of this.lay.nodes) if (!seen.has(n.depth)) seen.set(n.depth, n.layer);
    const left = Math.min(...this.lay.nodes.map((n) => n.x));
    this.gColumns.replaceChildren(
      ...[...seen].map(([depth, layer]) => s("text", { class: "column-title", x: left, y: depth * (NODE_H + GAP_Y) - 10 }, layer)),
    );
  }

  nodeElement(node) {
    const act = this.actions;
    const k = this.state.opts.k;
    const g = s("g", { class: "node", tabindex: "0", role: "treeitem", "data-path": node.path, "data-unit": node.unit });
    g.__node = node;
    const badge = node.sign === "neg" || node.pinned;
    const share = !node.parent ? "root" : node.share === null ? "on the path" : pct(node.share, node.share < 0.1 ? 1 : 0);
    const shareTip = !node.parent ? "the root of the tree" : shareWords(node) + (node.share === null ? "" : ` ${node.parent.unit}`);
    const clipId = `clip-${Math.random().toString(36).slice(2)}`;
    const img = s("image", { class: "node-img", href: this.state.nodeImage(node), x: 8, y: 34, width: IMG, height: IMG, preserveAspectRatio: "xMidYMid slice", "clip-path": `url(#${clipId})` });
    const ph = s("rect", { class: "img-ph", x: 8, y: 34, width: IMG, height: IMG, rx: 8 });
    img.addEventListener("load", () => ph.classList.add("done"));
    img.addEventListener("error", () => {
      ph.classList.add("broken");
      fetch(node.recon)
        .then((r) => r.json())
        .then((b) => {
          node.error = b.detail || "no reconstruction";
          this.decorate(node, g);
        })
        .catch(() => {});
    });
    const card = s("rect", { class: "card", width: NODE_W, height: NODE_H, rx: 12 });
    const parts = [
      s("clipPath", { id: clipId }, s("rect", { x: 8, y: 34, width: IMG, height: IMG, rx: 8 })),
      card,
      s("title", {}, node.label ? `${node.label} (${node.unit})` : node.unit),
      node.label
        ? s("text", { class: "node-title", x: 9, y: 17 }, clip(node.label.split(",")[0], badge ? 13 : 16))
        : s("text", { class: "node-title", x: 9, y: 17 }, `#${node.channel}`),
      node.label ? null : s("text", { class: "node-share", x: NODE_W - (badge ? 27 : 9), y: 17, "text-anchor": "end" }, s("title", {}, shareTip), share),
      s("text", { class: "node-layer", x: 9, y: 29 }, middleClip(node.label ? node.unit : node.layer, 21)),
      ph,
      img,
      s("rect", { class: "img-hit", x: 8, y: 34, width: IMG, height: IMG, rx: 8 }),
      node.sign === "neg" ? s("g", { class: "neg-badge", transform: `translate(${NODE_W - 15},15)` }, s("title", {}, "inhibitory: it lowers its parent"), s("circle", { r: 8 }), s("path", { d: "M-3.5,0 H3.5" })) : null,
      node.pinned ? s("g", { class: "pin-badge", transform: `translate(${NODE_W - 15},15)` }, s("title", {}, `on the shared path, not among the top ${k}`), s("circle", { r: 8 }), s("circle", { r: 2.5, class: "pin-dot" })) : null,
    ];
    g.append(...parts.filter(Boolean)); // (the DOM's own append writes a null as the text "null")
    const bar = s("g", { class: "weight", transform: `translate(10,${NODE_H - 15})` });
    g.append(bar);
    const buttons = s("g", { class: "node-buttons", transform: `translate(${NODE_W - 76},${NODE_H - 25})` });
    const btn = (i, name, label, icon, fn) => {
      const b = s("g", { class: `icon-btn icon-${name}`, transform: `translate(${i * 24},0)`, role: "button", tabindex: "0", "aria-label": label }, s("title", {}, label), s("rect", { width: 22, height: 22, rx: 6 }), s("path", { d: icon }));
      const run = (e) => {
        e.stopPropagation();
        fn();
      };
      b.addEventListener("click", run);
      b.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && run(e));
      return b;
    };
    buttons.append(
      btn(0, "up", "drill up: the units above it feeds most", "M11 16V6m0 0-4 4m4-4 4 4", () => act.drillUp(node)),
      btn(1, "unit", "open the unit page", "M9 6h7v7m0-7-9 9", () => (window.location.href = act.unitPage(node))),
      btn(2, "remove", "remove from the tree", "M7 7l8 8m0-8-8 8", () => act.remove(node)),
    );
    g.append(buttons);
    const knob = s("g", { class: "knob", transform: `translate(${NODE_W / 2},${NODE_H + 13})`, role: "button", "aria-label": "expand or collapse" }, s("circle", { r: 11 }), s("path", { class: "knob-icon", d: "" }), s("circle", { class: "knob-spin", r: 7 }));
    knob.addEventListener("click", (e) => {
      e.stopPropagation();
      act.toggle(node);
    });
    g.append(knob);
    g.addEventListener("click", (e) => {
      if (e.target.classList.contains("img-hit")) act.toggle(node);
      else act.select(node);
    });
    g.addEventListener("keydown", (e) => {
      if (e.target !== g) return;
      if (e.key === "Enter") act.toggle(node);
      if (e.key === " ") {
        e.preventDefault();
        act.select(node);
      }
    });
    const hit = g.querySelector(".img-hit");
    hit.addEventListener("mouseenter", () => act.hover.start(node, g));
    hit.addEventListener("mouseleave", () => act.hover.end());
    return g;
  }

  decorate(node, g) {
    g.classList.toggle("selected", node === this.state.selected);
    g.classList.toggle("loading", node.loading);
    g.classList.toggle("expanded", node.expanded);
    g.classList.toggle("has-error", !!node.error);
    g.classList.toggle("leaf", node.leaf);
    g.classList.toggle("neg", node.sign === "neg");
    const icon = g.querySelector(".knob-icon");
    icon.setAttribute("d", node.expanded ? "M-4.5,0 H4.5" : "M-4.5,0 H4.5 M0,-4.5 V4.5");
    g.querySelector(".knob").style.display = node.leaf ? "none" : "";
    const bar = g.querySelector(".weight");
    const share = node.share === null || !node.parent ? null : node.share;
    bar.replaceChildren(
      ...(share === null
        ? []
        : [s("rect", { class: "wbar-bg", x: 0, y: 0, width: 38, height: 6, rx: 3 }), s("rect", { class: "wbar", x: 0, y: 0, width: Math.max(2, 38 * share), height: 6, rx: 3 }), s("title", {}, shareWords(node))]),
    );
    let err = g.querySelector(".node-error");
    if (node.error && !err) {
      err = s("g", { class: "node-error" }, s("title", {}, node.error), s("circle", { cx: NODE_W - 14, cy: 44, r: 9 }), s("text", { x: NODE_W - 14, y: 48, "text-anchor": "middle" }, "!"));
      g.append(err);
    } else if (!node.error && err) err.remove();
  }
}

function defs() {
  return s(
    "defs",
    {},
    s(
      "filter",
      { id: "card-shadow", x: "-10%", y: "-10%", width: "120%", height: "130%" },
      s("feDropShadow", { dx: 0, dy: 1.5, stdDeviation: 2.2, "flood-color": "#0f172a", "flood-opacity": 0.12 }),
    ),
  );
}

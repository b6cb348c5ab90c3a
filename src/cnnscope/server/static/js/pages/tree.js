// Tree page: an SVG neuron tree rooted at a unit or class logit. Click a node's picture
// (or its knob) to expand its children in the next chain layer; the URL keeps the
// model, image, options, the selected path and the expanded nodes.

import { ApiError, RULES, api, enc, pages, query, splitUnit } from "../api.js";
import { crumbs, errorCard, h, lazyImage, mount, num, pct, s, spinner, toast } from "../dom.js";
import { GAP_Y, NODE_H, NODE_W, edgePath, layout } from "../tree/layout.js";
import { examplesSlot } from "../examples.js";
import { visualizationSlot } from "../vis.js";
import { segmented } from "./image.js";

const SCORINGS = [
  ["path", "Path"],
  ["local", "Local"],
  ["seed", "Seed"],
];
// What each rule shows, said where the rule is chosen.
const RULE_NOTES = {
  guided: "Guided: only positive gradients pass each ReLU. Each picture shows what drives its node; zoom frames where the node carries its evidence.",
  gradient: "Gradient: the true gradient, both signs (noisy, but faithful to the model).",
  deconvnet:
    "Deconvnet ignores the image at every ReLU, and this model has no max-pooling (whose switches are deconvnet's only other link to the image): its pictures are nearly the same checkerboard for every image. They show the pattern the weights prefer, not what this image contains.",
  guided_neg: "Guided neg: only negative gradients pass. The root's children are the units that lower it; below them, what drives those units.",
};
const GAINS = ["auto", "fixed", "none"];
const IMG = NODE_W - 16;

export async function render(app, { image, params, model }) {
  const info = await api(`/api/images/${enc(image)}`);
  const opts = readOptions(params);
  const selectedPath = (params.get("path") || "").trim();
  if (!selectedPath) {
    const preds = await api(`/api/images/${enc(image)}/predictions?k=1`);
    const keep = Object.fromEntries(params.entries());
    window.location.replace(pages.tree(image, { ...keep, model: model.name, rule: opts.rule, path: `logits:${preds.predictions[0].index}` }));
    return;
  }
  const rootUnit = selectedPath.split("/")[0];
  let rootInfo;
  try {
    rootInfo = await api(`/api/units/${enc(rootUnit)}`);
  } catch (err) {
    crumbs([["Gallery", "/"], [info.name, pages.image(image, model.name)], ["Tree"]]);
    mount(app, errorCard("This tree cannot be shown", err.message, [h("a", { class: "btn", href: pages.image(image, model.name) }, `Back to ${info.name}`)]));
    return;
  }
  document.title = `${rootInfo.label || rootUnit} · ${info.name} · cnnscope explorer`;
  crumbs([["Gallery", "/"], [info.name, pages.image(image, model.name)], [`Tree of ${rootInfo.label ? rootInfo.label.split(",")[0] : rootUnit}`]]);
  const view = new TreeView(app, { image, info, model, opts, rootInfo });
  await view.build(selectedPath, splitList(params.get("open")), splitList(params.get("hide")));
}

function readOptions(params) {
  const k = Number(params.get("k"));
  return {
    k: Number.isInteger(k) && k >= 1 && k <= 16 ? k : 5,
    rule: RULES.some(([r]) => r === params.get("rule")) ? params.get("rule") : "guided",
    scoring: SCORINGS.some(([v]) => v === params.get("scoring")) ? params.get("scoring") : "path",
    gain: GAINS.includes(params.get("gain")) ? params.get("gain") : "auto",
    neg: params.get("neg") === "1",
    zoom: params.get("zoom") !== "0",
  };
}

function splitList(text) {
  return (text || "").split(";").map((t) => t.trim()).filter(Boolean);
}

class TreeView {
  constructor(app, { image, info, model, opts, rootInfo }) {
    this.image = image;
    this.info = info;
    this.model = model;
    this.opts = opts;
    this.rootInfo = rootInfo;
    this.hidden = new Set();
    this.view = { tx: 40, ty: 40, z: 1 };
    this.generation = 0;
    this.hoverTimer = null;
    this.els = new Map();
    this.buildDom(app);
  }

  // ---------------------------------------------------------------- DOM skeleton
  buildDom(app) {
    const o = this.opts;
    const kSel = h("select", { class: "select", id: "opt-k", "aria-label": "children per node" }, [1, 2, 3, 4, 5, 6, 8, 10, 12, 16].map((n) => h("option", { value: n, selected: n === o.k }, `k = ${n}`)));
    kSel.addEventListener("change", () => this.setOption("k", Number(kSel.value)));
    const neg = h("input", { type: "checkbox", id: "opt-neg", checked: o.neg });
    neg.addEventListener("change", () => this.setOption("neg", neg.checked));
    const zoom = h("input", { type: "checkbox", id: "opt-zoom", checked: o.zoom });
    zoom.addEventListener("change", () => {
      this.opts.zoom = zoom.checked;
      for (const el of this.els.values()) el.querySelector(".node-img").setAttribute("href", this.nodeImage(el.__node));
      this.syncUrl();
    });
    const ruleSeg = segmented(RULES, o.rule, (v) => this.setOption("rule", v), "backward rule");
    ruleSeg.id = "opt-rule";
    const scoringSeg = segmented(SCORINGS, o.scoring, (v) => this.setOption("scoring", v), "scoring");
    scoringSeg.id = "opt-scoring";
    const copy = h("button", { type: "button", class: "btn btn-ghost", id: "copy-link", title: "copy a link to this view" }, "Copy link");
    copy.addEventListener("click", () => this.copyLink());

    this.svg = s("svg", { class: "tree-svg", id: "tree-svg", role: "tree", "aria-label": "neuron tree" });
    this.viewport = s("g", { class: "viewport" });
    this.gColumns = s("g", { class: "columns" });
    this.gEdges = s("g", { class: "edges" });
    this.gNodes = s("g", { class: "nodes" });
    this.gLabels = s("g", { class: "faith-labels" });
    this.viewport.append(this.gColumns, this.gEdges, this.gNodes, this.gLabels);
    this.svg.append(defs(), this.viewport);
    this.popover = h("div", { class: "popover", hidden: true });
    this.panel = h("aside", { class: "tree-panel", id: "tree-panel", "aria-label": "selected node" });
    const zoomBtn = (label, title, fn) => {
      const b = h("button", { type: "button", class: "zoom-btn", title, "aria-label": title }, label);
      b.addEventListener("click", fn);
      return b;
    };
    // The zoom buttons and the legend sit in a strip below the drawing, never over a node.
    this.canvas = h(
      "div",
      { class: "tree-canvas", id: "tree-canvas" },
      this.svg,
      h(
        "div",
        { class: "tree-footer" },
        h("div", { class: "zoom-controls" }, zoomBtn("+", "zoom in", () => this.zoomBy(1.2)), zoomBtn("−", "zoom out", () => this.zoomBy(1 / 1.2)), zoomBtn("⤢", "fit the tree", () => this.fit())),
        h("div", { class: "legend" }, h("span", { class: "lg lg-pos" }, "excites"), h("span", { class: "lg lg-neg" }, "inhibits"), h("span", { class: "lg lg-faith" }, "the node's value → with its shown children zeroed · with as many random ones")),
      ),
      this.popover,
    );
    const thumb = h("img", { src: this.info.thumbnail, alt: "", class: "toolbar-thumb" });
    this.ruleNote = h("p", { id: "rule-note" });
    this.showRuleNote();
    mount(
      app,
      h(
        "div",
        { class: "page page-tree" },
        h(
          "div",
          { class: "toolbar" },
          h("a", { class: "toolbar-image", href: pages.image(this.image, this.model.name), title: this.info.name }, thumb, h("span", { class: "toolbar-name" }, this.info.name)),
          h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Rule"), ruleSeg),
          h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Scores"), scoringSeg),
          h("div", { class: "toolbar-group" }, kSel),
          h("label", { class: "switch", for: "opt-neg", title: "also show the children that work against the rule's evidence (under guided: the inhibitory ones; under guided neg: those that raise the root)" }, neg, h("span", { class: "switch-track" }), "Both signs"),
          h("label", { class: "switch switch-accent", for: "opt-zoom", title: "zoom each picture on the cells where its node carries its evidence" }, zoom, h("span", { class: "switch-track" }), "Zoom"),
          h("div", { class: "toolbar-spacer" }),
          copy,
        ),
        this.ruleNote,
        h("div", { class: "tree-body" }, this.canvas, this.panel),
      ),
    );
    this.installPanZoom();
  }

  // ---------------------------------------------------------------- model of the tree
  makeNode(data, parent) {
    const unit = data.unit;
    const { layer, channel } = splitUnit(unit);
    return {
      path: data.path,
      unit,
      layer: data.layer || layer,
      channel: Number(data.channel ?? channel),
      label: data.label || null,
      weight: data.weight ?? null,
      share: data.share ?? null,
      sign: data.sign || "pos",
      recon: data.reconstruction || this.reconUrl(data.path),
      parent,
      children: null,
      expanded: false,
      loading: false,
      error: null,
      faith: null,
      pinned: !!data.pinned,
      leaf: false,
    };
  }

  reconUrl(path) {
    const o = this.opts;
    const scoring = o.scoring === "seed" ? "seed" : null; // local nodes are drawn along their path
    return `/api/images/${enc(this.image)}/reconstruction.png${query({ path, rule: o.rule, gain: o.gain, scoring, model: this.model.name })}`;
  }

  childQuery(node, sign) {
    const o = this.opts;
    return query({ path: node.path, k: o.k, rule: o.rule, scoring: o.scoring, gain: o.gain, sign, model: this.model.name });
  }

  visibleChildren(node) {
    if (!node.expanded || !node.children) return [];
    return node.children.filter((c) => !this.hidden.has(c.path));
  }

  /** Draw the tree of `selectedPath`, opening `open`; `refit`: fit the whole tree in view
   *  when done (after an option change) instead of the first view's readable zoom. */
  async build(selectedPath, open, hide, refit = false) {
    const gen = ++this.generation;
    this.hidden = new Set(hide);
    const rootPath = selectedPath.split("/")[0];
    this.root = this.makeNode({ unit: this.rootInfo.unit, path: rootPath, label: this.rootInfo.label, layer: this.rootInfo.layer, channel: this.rootInfo.channel }, null);
    this.selected = this.root;
    const want = new Set(open);
    const parts = selectedPath.split("/");
    for (let i = 1; i < parts.length; i++) want.add(parts.slice(0, i).join("/"));
    if (!open.length && parts.length === 1) want.add(rootPath); // a fresh tree opens its root
    this.draw(true);
    let level = [this.root];
    while (level.length && gen === this.generation) {
      const next = [];
      await Promise.all(
        level.map(async (node) => {
          if (!want.has(node.path)) return;
          const must = [...want, selectedPath].map((p) => nextOnPath(p, node.path)).filter(Boolean);
          await this.expand(node, { quiet: true, sync: false, mustHave: [...new Set(must)] });
          next.push(...this.visibleChildren(node));
        }),
      );
      level = next;
      this.draw(false);
    }
    if (gen !== this.generation) return;
    this.selected = this.find(selectedPath) || this.root;
    this.draw(false);
    this.fit(!refit);
    this.renderPanel();
    this.syncUrl();
  }

  find(path) {
    const stack = [this.root];
    while (stack.length) {
      const n = stack.pop();
      if (n.path === path) return n;
      if (n.children) stack.push(...n.children);
    }
    return null;
  }

  async expand(node, { quiet = false, sync = true, mustHave = [] } = {}) {
    if (node.leaf) return;
    if (node.children) {
      node.expanded = true;
      if (sync) this.afterChange(node);
      return;
    }
    node.loading = true;
    node.error = null;
    this.updateNode(node);
    const gen = this.generation;
    try {
      const signs = this.opts.neg ? ["pos", "neg"] : ["pos"];
      const answers = await Promise.all(signs.map((sign) => api(`/api/images/${enc(this.image)}/children${this.childQuery(node, sign)}`)));
      if (gen !== this.generation) return;
      const seen = new Set();
      const kids = [];
      answers.forEach((ans) => {
        for (const c of ans.children) {
          if (seen.has(c.path)) continue;
          seen.add(c.path);
          kids.push(this.makeNode(c, node));
        }
      });
      for (const path of mustHave) {
        if (seen.has(path)) continue;
        const unit = path.split("/").pop().replace(/~/g, "#");
        kids.push(this.makeNode({ unit, path, pinned: true }, node));
      }
      node.children = kids;
      const below = answers[0].layer;
      node.leaf = !below;
      node.expanded = kids.length > 0;
      if (!kids.length && !quiet) {
        toast(below ? `No unit of ${below} carries evidence for ${node.unit} under this rule${this.opts.neg ? "" : " (try Both signs)"}` : `${node.unit} is in the bottom layer of the chain: it has no children`);
      }
      if (answers[0].children.length) this.loadFaithfulness(node);
    } catch (err) {
      if (gen !== this.generation) return;
      node.error = err instanceof ApiError ? err.detail : String(err);
      toast(`Could not expand ${node.unit}: ${node.error}`, "error", 7000);
    } finally {
      node.loading = false;
    }
    if (sync) this.afterChange(node);
  }

  async loadFaithfulness(node) {
    node.faith = "loading";
    const gen = this.generation;
    try {
      const f = await api(`/api/images/${enc(this.image)}/faithfulness${this.childQuery(node, "pos")}`);
      if (gen !== this.generation) return;
      node.faith = f;
    } catch (err) {
      node.faith = { error: err instanceof ApiError ? err.detail : String(err) };
    }
    this.drawLabels();
    if (this.selected === node) this.renderPanel();
  }

  collapse(node) {
    node.expanded = false;
    if (this.selected && isBelow(this.selected, node)) this.selected = node;
    this.afterChange(node);
  }

  remove(node) {
    if (!node.parent) return;
    this.hidden.add(node.path);
    if (this.selected && (this.selected === node || isBelow(this.selected, node))) this.selected = node.parent;
    this.afterChange(node.parent);
  }

  toggle(node) {
    this.selected = node;
    if (node.expanded) this.collapse(node);
    else this.expand(node);
  }

  select(node) {
    this.selected = node;
    this.draw(false);
    this.renderPanel();
    this.syncUrl();
  }

  afterChange(focus) {
    this.draw(false);
    if (this.fitsAt(0.7)) this.fit();
    else if (focus) this.reveal(focus);
    this.renderPanel();
    this.syncUrl();
  }

  setOption(key, value) {
    this.opts[key] = value;
    if (key === "rule") this.showRuleNote();
    const open = [];
    this.walk((n) => n.expanded && open.push(n.path));
    const selected = this.selected ? this.selected.path : this.root.path;
    this.clearNodes();
    this.build(selected, open, [...this.hidden], true);
  }

  showRuleNote() {
    this.ruleNote.className = `rule-note rule-note-${this.opts.rule}`;
    this.ruleNote.textContent = RULE_NOTES[this.opts.rule];
  }

  walk(fn, node = this.root) {
    fn(node);
    for (const c of this.visibleChildren(node)) this.walk(fn, c);
  }

  // ---------------------------------------------------------------- URL
  syncUrl() {
    const o = this.opts;
    const open = [];
    this.walk((n) => n.expanded && open.push(n.path));
    const params = {
      model: this.model.name,
      rule: o.rule,
      k: o.k === 5 ? null : o.k,
      scoring: o.scoring === "path" ? null : o.scoring,
      gain: o.gain === "auto" ? null : o.gain,
      neg: o.neg ? 1 : null,
      zoom: o.zoom ? null : 0,
      path: (this.selected || this.root).path,
      open: open.join(";"),
      hide: [...this.hidden].join(";"),
    };
    history.replaceState(null, "", pages.tree(this.image, params));
  }

  async copyLink() {
    const url = window.location.href;
    try {
      await navigator.clipboard.writeText(url);
      toast("Link copied: it restores this exact view");
    } catch (_) {
      window.prompt("Copy this link:", url);
    }
  }

  // ---------------------------------------------------------------- drawing
  clearNodes() {
    this.hoverEnd();
    for (const el of this.els.values()) el.remove();
    this.els.clear();
  }

  draw(first) {
    this.lay = layout(this.root, (n) => this.visibleChildren(n));
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
        if (this.hoverNode === el) this.hoverEnd();
        el.remove();
        this.els.delete(path);
      }
    }
    this.drawEdges();
    this.drawLabels();
    this.drawColumns();
    if (first) this.applyView();
  }

  drawEdges() {
    const parts = [];
    for (const node of this.lay.nodes) {
      const kids = this.visibleChildren(node);
      if (!kids.length) continue;
      for (const kid of kids) {
        const share = kid.share === null ? 0.1 : Math.sqrt(kid.share);
        const cls = `edge ${kid.sign === "neg" ? "edge-neg" : "edge-pos"}${kid.pinned ? " edge-pinned" : ""}`;
        parts.push(
          s(
            "path",
            { class: cls, d: edgePath(node, kid), "stroke-width": (1.25 + 4.5 * share).toFixed(2) },
            s("title", {}, kid.weight === null ? `${kid.unit}: on the shared path, not among the top ${this.opts.k}` : `${node.unit} ← ${kid.unit}: ${shareWords(kid)}`),
          ),
        );
      }
    }
    this.gEdges.replaceChildren(...parts);
  }

  drawLabels() {
    const parts = [];
    for (const node of this.lay?.nodes || []) {
      if (!this.visibleChildren(node).length || !node.faith) continue;
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
    const g = s("g", { class: "node", tabindex: "0", role: "treeitem", "data-path": node.path, "data-unit": node.unit });
    g.__node = node;
    const badge = node.sign === "neg" || node.pinned;
    const share = !node.parent ? "root" : node.share === null ? "on the path" : pct(node.share, node.share < 0.1 ? 1 : 0);
    const shareTip = !node.parent ? "the root of the tree" : shareWords(node) + (node.share === null ? "" : ` ${node.parent.unit}`);
    const clipId = `clip-${Math.random().toString(36).slice(2)}`;
    const img = s("image", { class: "node-img", href: this.nodeImage(node), x: 8, y: 34, width: IMG, height: IMG, preserveAspectRatio: "xMidYMid slice", "clip-path": `url(#${clipId})` });
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
      node.pinned ? s("g", { class: "pin-badge", transform: `translate(${NODE_W - 15},15)` }, s("title", {}, `on the shared path, not among the top ${this.opts.k}`), s("circle", { r: 8 }), s("circle", { r: 2.5, class: "pin-dot" })) : null,
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
      btn(0, "up", "drill up: the units above it feeds most", "M11 16V6m0 0-4 4m4-4 4 4", () => this.drillUp(node)),
      btn(1, "unit", "open the unit page", "M9 6h7v7m0-7-9 9", () => (window.location.href = this.unitPage(node))),
      btn(2, "remove", "remove from the tree", "M7 7l8 8m0-8-8 8", () => this.remove(node)),
    );
    g.append(buttons);
    const knob = s("g", { class: "knob", transform: `translate(${NODE_W / 2},${NODE_H + 13})`, role: "button", "aria-label": "expand or collapse" }, s("circle", { r: 11 }), s("path", { class: "knob-icon", d: "" }), s("circle", { class: "knob-spin", r: 7 }));
    knob.addEventListener("click", (e) => {
      e.stopPropagation();
      this.toggle(node);
    });
    g.append(knob);
    g.addEventListener("click", (e) => {
      if (e.target.classList.contains("img-hit")) this.toggle(node);
      else this.select(node);
    });
    g.addEventListener("keydown", (e) => {
      if (e.target !== g) return;
      if (e.key === "Enter") this.toggle(node);
      if (e.key === " ") {
        e.preventDefault();
        this.select(node);
      }
    });
    const hit = g.querySelector(".img-hit");
    hit.addEventListener("mouseenter", () => this.hoverStart(node, g));
    hit.addEventListener("mouseleave", () => this.hoverEnd());
    return g;
  }

  decorate(node, g) {
    g.classList.toggle("selected", node === this.selected);
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

  updateNode(node) {
    const el = this.els.get(node.path);
    if (el) this.decorate(node, el);
  }

  nodeImage(node) {
    return this.opts.zoom ? `${node.recon}&crop=focus` : node.recon;
  }

  unitPage(node) {
    return pages.unit(node.unit, { image: this.image, model: this.model.name, rule: this.opts.rule });
  }

  // ---------------------------------------------------------------- hover: dataset examples
  // The popover opens only once it has something to show (never empty), and is placed
  // beside the node inside the drawing area (never cut off by the window's edge).
  hoverStart(node, g) {
    clearTimeout(this.hoverTimer);
    this.hoverTimer = setTimeout(() => {
      this.hoverEnd();
      this.hoverNode = g;
      const mine = () => this.hoverNode === g && g.isConnected;
      const body = examplesSlot(node.unit, {
        cls: "examples-img",
        about: "short",
        onShow: () => mine() && this.placePopover(g),
        onHide: () => mine() && this.hoverEnd(),
      });
      mount(this.popover, h("div", { class: "popover-title" }, "Dataset examples · ", h("code", {}, node.unit)), body);
    }, 450);
  }

  hoverEnd() {
    clearTimeout(this.hoverTimer);
    this.hoverNode = null;
    this.popover.hidden = true;
    this.popover.replaceChildren();
  }

  placePopover(g) {
    const pop = this.popover;
    const area = this.svg.getBoundingClientRect();
    const origin = this.canvas.getBoundingClientRect();
    const card = g.querySelector(".card").getBoundingClientRect();
    const margin = 8;
    pop.style.visibility = "hidden"; // measured before it is seen
    pop.hidden = false;
    const img = pop.querySelector(".examples-img img");
    if (img) img.style.maxHeight = "";
    const room = area.height - 2 * margin;
    if (img && pop.offsetHeight > room) img.style.maxHeight = `${Math.max(60, img.offsetHeight - (pop.offsetHeight - room))}px`;
    const w = pop.offsetWidth;
    const hgt = pop.offsetHeight;
    let left = card.right + 10;
    if (left + w > area.right - margin) left = card.left - 10 - w; // no room on the right: the left side
    left = Math.min(Math.max(left, area.left + margin), area.right - margin - w);
    const top = Math.min(Math.max(card.top, area.top + margin), area.bottom - margin - hgt);
    pop.style.left = `${left - origin.left}px`;
    pop.style.top = `${Math.max(area.top + margin, top) - origin.top}px`;
    pop.style.visibility = "";
  }

  // ---------------------------------------------------------------- drill up
  // The answer is kept in this.drill, not only in the DOM: the panel is re-rendered while
  // the (slow) request runs (a faithfulness label arriving, a rebuild ending).
  async drillUp(node) {
    const { k, rule } = this.opts;
    const drill = { path: node.path, k, rule, answer: null, error: null };
    this.drill = drill;
    this.select(node);
    try {
      drill.answer = await api(`/api/images/${enc(this.image)}/parents${query({ unit: node.unit.replace(/#/g, "~"), k, rule, model: this.model.name })}`);
    } catch (err) {
      drill.error = err instanceof ApiError ? err.detail : String(err);
    }
    const box = this.panel.querySelector(".parents-box");
    if (box && this.drill === drill) mount(box, this.parentsContent(this.selected || this.root));
  }

  /** The drill-up box of the panel of ``n``: a prompt, a spinner, the parents or an error. */
  parentsContent(n) {
    const d = this.drill;
    if (!d || d.path !== n.path || d.k !== this.opts.k || d.rule !== this.opts.rule) {
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
        ans.parents.map((p) =>
          h(
            "a",
            {
              class: `parent-item${p.sign === "neg" ? " neg" : ""}`,
              href: pages.tree(this.image, { model: this.model.name, rule: d.rule, path: p.path, open: p.path.split("/")[0] }),
              title: `re-root the tree at ${p.unit}`,
            },
            lazyImage(p.reconstruction, { alt: p.unit, cls: "parent-img" }),
            h("span", {}, h("code", {}, p.unit), p.label ? h("span", { class: "muted small" }, ` ${p.label.split(",")[0]}`) : null, h("span", { class: "muted small" }, ` · ${num(p.weight)}`)),
          ),
        ),
      ),
    ];
  }

  // ---------------------------------------------------------------- side panel
  renderPanel() {
    const n = this.selected || this.root;
    const spatial = !n.label && n.layer !== "logits";
    const pathParts = n.path.split("/");
    const crumbsEls = pathParts.map((u, i) => {
      const p = pathParts.slice(0, i + 1).join("/");
      const target = this.find(p);
      return h("button", { type: "button", class: `path-chip${i === pathParts.length - 1 ? " current" : ""}`, onclick: () => target && this.select(target) }, u.replace(/~/g, "#"));
    });
    const actions = [];
    if (!n.leaf) {
      const b = h("button", { type: "button", class: "btn btn-primary", id: "panel-toggle" }, n.expanded ? "Collapse" : n.loading ? "Expanding…" : "Expand");
      b.addEventListener("click", () => this.toggle(n));
      actions.push(b);
    }
    const up = h("button", { type: "button", class: "btn", id: "panel-drill" }, "Drill up");
    up.addEventListener("click", () => this.drillUp(n));
    actions.push(up, h("a", { class: "btn btn-ghost", href: this.unitPage(n) }, "Unit page"));
    if (n.parent) {
      const rm = h("button", { type: "button", class: "btn btn-ghost" }, "Remove");
      rm.addEventListener("click", () => this.remove(n));
      actions.push(rm);
    }
    const f = n.faith && n.faith !== "loading" && !n.faith.error ? n.faith : null;
    mount(
      this.panel,
      h("div", { class: "panel-head" }, h("h2", {}, n.label ? n.label.split(",")[0] : h("code", {}, n.unit)), n.label ? h("code", { class: "muted" }, n.unit) : null),
      h(
        "div",
        { class: "panel-images" },
        h("figure", {}, lazyImage(n.recon, { alt: `reconstruction of ${n.unit}`, cls: "panel-img" }), h("figcaption", {}, "Reconstruction along its path (whole image)")),
        spatial ? h("figure", {}, lazyImage(`/api/images/${enc(this.image)}/activation.png${query({ unit: n.unit.replace(/#/g, "~"), model: this.model.name })}`, { alt: `activation of ${n.unit}`, cls: "panel-img" }), h("figcaption", {}, "Where it fires")) : null,
      ),
      h("div", { class: "panel-actions" }, actions),
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
      h(
        "section",
        { class: "panel-section" },
        h("h3", {}, "Feature visualization"),
        visualizationSlot(n.unit, this.model),
      ),
      h(
        "section",
        { class: "panel-section" },
        h("h3", {}, "Dataset examples"),
        examplesSlot(n.unit),
      ),
    );
  }

  // ---------------------------------------------------------------- pan and zoom
  applyView() {
    const { tx, ty, z } = this.view;
    this.viewport.setAttribute("transform", `translate(${tx},${ty}) scale(${z})`);
  }

  fitsAt(minZoom) {
    const rect = this.svg.getBoundingClientRect();
    const b = this.bounds();
    return rect.width > 0 && Math.min(rect.width / b.w, rect.height / b.h) >= minZoom;
  }

  bounds() {
    const pad = 26;
    return { x: -pad, y: -pad - 16, w: this.lay.width + 2 * pad, h: this.lay.height + 2 * pad + 40 };
  }

  fit(initial = false) {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width || !this.lay) return;
    const b = this.bounds();
    let z = Math.min(rect.width / b.w, rect.height / b.h, 1);
    if (initial) z = Math.max(z, 0.7);
    z = Math.max(0.2, z);
    this.view.z = z;
    this.view.tx = b.w * z <= rect.width ? (rect.width - b.w * z) / 2 - b.x * z : 12 - b.x * z;
    this.view.ty = b.h * z <= rect.height ? (rect.height - b.h * z) / 2 - b.y * z : 12 - b.y * z;
    if (initial && b.w * z > rect.width) {
      const sel = this.selected || this.root;
      this.view.tx = rect.width / 2 - (sel.x + NODE_W / 2) * z;
    }
    this.applyView();
  }

  zoomBy(factor, cx, cy) {
    const rect = this.svg.getBoundingClientRect();
    const px = cx ?? rect.width / 2;
    const py = cy ?? rect.height / 2;
    const z = Math.min(2.5, Math.max(0.15, this.view.z * factor));
    const k = z / this.view.z;
    this.view.tx = px - (px - this.view.tx) * k;
    this.view.ty = py - (py - this.view.ty) * k;
    this.view.z = z;
    this.applyView();
  }

  reveal(node) {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width) return;
    const group = [node, ...this.visibleChildren(node)];
    const b = this.bounds();
    if (b.w * this.view.z > rect.width || b.h * this.view.z > rect.height) {
      // The tree outgrew the view: zoom out, but not below a readable size.
      const z = Math.max(0.7, Math.min(rect.width / b.w, rect.height / b.h, 1));
      if (z < this.view.z) this.zoomBy(z / this.view.z);
    }
    const z = this.view.z;
    const x0 = Math.min(...group.map((n) => n.x)) * z + this.view.tx;
    const x1 = (Math.max(...group.map((n) => n.x)) + NODE_W) * z + this.view.tx;
    const y0 = Math.min(...group.map((n) => n.y)) * z + this.view.ty;
    const y1 = (Math.max(...group.map((n) => n.y)) + NODE_H + 12) * z + this.view.ty;
    let dx = 0;
    let dy = 0;
    if (x1 - x0 < rect.width - 24) {
      if (x1 > rect.width - 12) dx = rect.width - 12 - x1;
      if (x0 + dx < 12) dx = 12 - x0;
    } else {
      dx = rect.width / 2 - (node.x + NODE_W / 2) * z - this.view.tx;
    }
    if (y1 > rect.height - 12) dy = rect.height - 12 - y1;
    if (y0 + dy < 12) dy = 12 - y0;
    this.view.tx += dx;
    this.view.ty += dy;
    this.applyView();
  }

  installPanZoom() {
    let drag = null;
    this.svg.addEventListener("pointerdown", (e) => {
      if (e.target.closest(".node") || e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, tx: this.view.tx, ty: this.view.ty };
      this.svg.setPointerCapture(e.pointerId);
      this.svg.classList.add("dragging");
    });
    this.svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.view.tx = drag.tx + e.clientX - drag.x;
      this.view.ty = drag.ty + e.clientY - drag.y;
      this.applyView();
    });
    const end = () => {
      drag = null;
      this.svg.classList.remove("dragging");
    };
    this.svg.addEventListener("pointerup", end);
    this.svg.addEventListener("pointercancel", end);
    this.svg.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const rect = this.svg.getBoundingClientRect();
        if (e.ctrlKey || e.metaKey) {
          this.zoomBy(Math.exp(-e.deltaY * 0.0025), e.clientX - rect.left, e.clientY - rect.top);
        } else {
          this.view.tx -= e.shiftKey ? e.deltaY : e.deltaX;
          this.view.ty -= e.shiftKey ? 0 : e.deltaY;
          this.applyView();
        }
      },
      { passive: false },
    );
    window.addEventListener("resize", () => this.lay && this.applyView());
  }
}

function nextOnPath(selected, path) {
  if (!selected.startsWith(path + "/")) return null;
  const rest = selected.slice(path.length + 1).split("/");
  return `${path}/${rest[0]}`;
}

function isBelow(node, ancestor) {
  for (let n = node.parent; n; n = n.parent) if (n === ancestor) return true;
  return false;
}

/** A child's weight in words: its share of its parent's evidence of the same sign. */
function shareWords(node) {
  if (node.share === null) return "on the shared path, not among the top k";
  const how = node.sign === "neg" ? "inhibits" : "excites";
  return `${how}: ${pct(node.share, node.share < 0.1 ? 1 : 0)} of the ${node.sign === "neg" ? "inhibitory" : "excitatory"} evidence that reaches`;
}

/** A faithfulness measurement in words: what was zeroed, what was measured, what it did. */
function faithWords(f) {
  const n = f.children.length;
  const more = f.children.length > 3 ? ", …" : "";
  const layers = [...new Set(f.children.map((c) => splitUnit(c).layer))];
  const names = f.children.slice(0, 3).map((c) => (layers.length === 1 ? `#${splitUnit(c).channel}` : c));
  const of = layers.length === 1 ? ` of ${layers[0]}` : "";
  return `Zeroing its ${n} shown children (${names.join(", ")}${more}${of}) takes ${f.measure} from ${num(f.value)} to ${num(f.zeroed)} (${change(f.drop, 1)}). Zeroing ${n} random channels of the same layer instead takes it to ${num(f.random_zeroed)} on average (${change(f.random_drop, 1)} ± ${pct(f.random_std)}).`;
}

/** The change of an activation when channels are zeroed: drop 0.19 -> "−19%". */
function change(drop, digits = null) {
  if (!Number.isFinite(drop)) return "–";
  const a = Math.abs(drop);
  return `${drop >= 0 ? "−" : "+"}${pct(a, digits ?? (a < 0.1 ? 1 : 0))}`;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** Shorten in the middle, keeping both ends readable: "blocks.11.…nd_act". */
function middleClip(text, n) {
  if (text.length <= n) return text;
  const tail = Math.floor((n - 1) / 2);
  return `${text.slice(0, n - 1 - tail)}…${text.slice(-tail)}`;
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

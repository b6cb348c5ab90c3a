// Tree page: an SVG neuron tree rooted at a unit or class logit. Click a node's picture
// (or its knob) to expand its children in the next chain layer; the URL keeps the
// model, image, options, the selected path and the expanded nodes. The parts live in
// ../tree/: state (options, nodes, requests), draw (the SVG), panzoom, popover (hover),
// panel (the selected node) and controls (toolbar); this page wires them together.

import { api, enc, errorText, pages } from "../api.js";
import { crumbs, errorCard, h, mount, toast } from "../dom.js";
import { footer, ruleNote, toolbar } from "../tree/controls.js";
import { TreeDrawing } from "../tree/draw.js";
import { Panel } from "../tree/panel.js";
import { PanZoom } from "../tree/panzoom.js";
import { Popover } from "../tree/popover.js";
import { TreeState, nextOnPath, readOptions, splitList } from "../tree/state.js";

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
    crumbs([["Gallery", pages.gallery()], [info.name, pages.image(image, model.name)], ["Tree"]]);
    mount(app, errorCard("This tree cannot be shown", err.message, [h("a", { class: "btn", href: pages.image(image, model.name) }, `Back to ${info.name}`)]));
    return;
  }
  document.title = `${rootInfo.label || rootUnit} · ${info.name} · cnnscope explorer`;
  crumbs([["Gallery", pages.gallery()], [info.name, pages.image(image, model.name)], [`Tree of ${rootInfo.label ? rootInfo.label.split(",")[0] : rootUnit}`]]);
  const view = new TreeView(app, { image, info, model, opts, rootInfo });
  await view.build(selectedPath, splitList(params.get("open")), splitList(params.get("hide")));
}

class TreeView {
  constructor(app, { image, info, model, opts, rootInfo }) {
    const st = (this.state = new TreeState({ image, model, opts, rootInfo }));
    const unitPage = (node) => pages.unit(node.unit, { image, model: model.name, rule: st.opts.rule });
    const hover = { start: (n, g) => this.popover.start(n, g), end: () => this.popover.end(), on: (g) => this.popover.on(g) };
    this.panel = new Panel(st, { select: (n) => this.select(n), toggle: (n) => this.toggle(n), remove: (n) => this.remove(n), unitPage });
    this.drawing = new TreeDrawing(st, { toggle: (n) => this.toggle(n), select: (n) => this.select(n), remove: (n) => this.remove(n), drillUp: (n) => this.panel.drillUp(n), unitPage, hover });
    this.pz = new PanZoom(this.drawing.svg, this.drawing.viewport, () => this.drawing.lay);
    const canvas = h("div", { class: "tree-canvas", id: "tree-canvas" }, this.drawing.svg, footer(this.pz));
    this.popover = new Popover(canvas, this.drawing.svg);
    canvas.append(this.popover.el);
    this.note = ruleNote();
    this.note.show(opts.rule);
    const zoom = (on) => {
      st.opts.zoom = on;
      this.drawing.refreshImages();
      this.syncUrl();
    };
    const bar = toolbar({ image, info, model, opts }, { set: (key, value) => this.setOption(key, value), zoom });
    mount(app, h("div", { class: "page page-tree" }, bar, this.note.el, h("div", { class: "tree-body" }, canvas, this.panel.el)));
  }

  /** Draw the tree of `selectedPath`, opening `open`; `refit`: fit the whole tree in view
   *  when done (after an option change) instead of the first view's readable zoom. */
  async build(selectedPath, open, hide, refit = false) {
    const st = this.state;
    const want = st.reset(selectedPath, open, hide);
    const gen = st.generation;
    this.drawing.draw();
    this.pz.apply();
    let level = [st.root];
    while (level.length && gen === st.generation) {
      const next = [];
      await Promise.all(
        level.map(async (node) => {
          if (!want.has(node.path)) return;
          const must = [...want, selectedPath].map((p) => nextOnPath(p, node.path)).filter(Boolean);
          await this.expand(node, { quiet: true, sync: false, mustHave: [...new Set(must)] });
          next.push(...st.visibleChildren(node));
        }),
      );
      level = next;
      this.drawing.draw();
    }
    if (gen !== st.generation) return;
    st.selected = st.find(selectedPath) || st.root;
    this.drawing.draw();
    this.pz.fit(!refit, st.selected);
    this.panel.render();
    this.syncUrl();
  }

  async expand(node, { quiet = false, sync = true, mustHave = [] } = {}) {
    const st = this.state;
    if (node.leaf) return;
    if (node.children) {
      node.expanded = true;
      if (sync) this.afterChange(node);
      return;
    }
    node.loading = true;
    node.error = null;
    this.drawing.update(node);
    const gen = st.generation;
    try {
      const got = await st.fetchChildren(node, mustHave);
      if (!got) return;
      if (!node.children.length && !quiet) {
        toast(got.reason || `${node.unit} has no children`); // the server says why, in one line
      }
      if (got.ranked) this.loadFaithfulness(node);
    } catch (err) {
      if (gen !== st.generation) return;
      node.error = errorText(err);
      toast(`Could not expand ${node.unit}: ${node.error}`, "error", 7000);
    } finally {
      node.loading = false;
    }
    if (sync) this.afterChange(node);
  }

  async loadFaithfulness(node) {
    if (!(await this.state.fetchFaithfulness(node))) return;
    this.drawing.drawLabels();
    if (this.state.selected === node) this.panel.render();
  }

  remove(node) {
    if (!node.parent) return;
    this.state.remove(node);
    this.afterChange(node.parent);
  }

  toggle(node) {
    this.state.selected = node;
    if (!node.expanded) {
      this.expand(node);
      return;
    }
    this.state.collapse(node);
    this.afterChange(node);
  }

  select(node) {
    this.state.selected = node;
    this.drawing.draw();
    this.panel.render();
    this.syncUrl();
  }

  afterChange(focus) {
    this.drawing.draw();
    if (this.pz.fitsAt(0.7)) this.pz.fit();
    else if (focus) this.pz.reveal(focus, this.state.visibleChildren(focus));
    this.panel.render();
    this.syncUrl();
  }

  setOption(key, value) {
    const st = this.state;
    st.opts[key] = value;
    if (key === "rule") this.note.show(value);
    const open = st.openPaths();
    const selected = st.selected ? st.selected.path : st.root.path;
    this.drawing.clear();
    this.build(selected, open, [...st.hidden], true);
  }

  syncUrl() {
    history.replaceState(null, "", pages.tree(this.state.image, this.state.urlParams()));
  }
}

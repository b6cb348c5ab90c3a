// The tree page's state: its options (read from and written to the URL), the tree of nodes
// (which are expanded, which hidden, which selected), and the requests that fill it in.

import { api, defaults, enc, errorText, known, query, splitUnit, termNames, unitFromUrl } from "../api.js";

export const KS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16];

/** The page's options from its URL (a value the vocabulary lacks falls back to the default). */
export function readOptions(params) {
  const k = Number(params.get("k"));
  return {
    k: Number.isInteger(k) && k >= 1 && k <= 16 ? k : defaults().k,
    rule: known("rules", params.get("rule"), defaults().rule),
    scoring: known("scorings", params.get("scoring"), defaults().scoring),
    gain: known("gains", params.get("gain"), defaults().gain),
    neg: params.get("neg") === "1",
    zoom: params.get("zoom") !== "0",
  };
}

/** "a;b;" -> ["a", "b"]: the URL's lists of tree paths. */
export function splitList(text) {
  return (text || "").split(";").map((t) => t.trim()).filter(Boolean);
}

/** The path one step below `path` on the way to `selected` (null if not on the way). */
export function nextOnPath(selected, path) {
  if (!selected.startsWith(path + "/")) return null;
  const rest = selected.slice(path.length + 1).split("/");
  return `${path}/${rest[0]}`;
}

/** Whether `node` lies somewhere under `ancestor`. */
export function isBelow(node, ancestor) {
  for (let n = node.parent; n; n = n.parent) if (n === ancestor) return true;
  return false;
}

export class TreeState {
  constructor({ image, model, opts, rootInfo }) {
    this.image = image;
    this.model = model;
    this.opts = opts;
    this.rootInfo = rootInfo;
    this.hidden = new Set();
    this.generation = 0; // bumped by each rebuild: answers to an older tree are dropped
    this.root = null;
    this.selected = null;
  }

  /** Start a new tree of `selectedPath`'s root; returns the paths to open (`open`, the way
   *  to the selected node, and a fresh tree's root). */
  reset(selectedPath, open, hide) {
    this.generation += 1;
    this.hidden = new Set(hide);
    const rootPath = selectedPath.split("/")[0];
    const r = this.rootInfo;
    this.root = this.makeNode({ unit: r.unit, path: rootPath, label: r.label, layer: r.layer, channel: r.channel }, null);
    this.selected = this.root;
    const want = new Set(open);
    const parts = selectedPath.split("/");
    for (let i = 1; i < parts.length; i++) want.add(parts.slice(0, i).join("/"));
    if (!open.length && parts.length === 1) want.add(rootPath); // a fresh tree opens its root
    return want;
  }

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
      sign: data.sign || defaults().sign,
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

  /** The picture a node's card shows (zoomed on its evidence with the Zoom option). */
  nodeImage(node) {
    return this.opts.zoom ? `${node.recon}&crop=focus` : node.recon;
  }

  visibleChildren(node) {
    if (!node.expanded || !node.children) return [];
    return node.children.filter((c) => !this.hidden.has(c.path));
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

  walk(fn, node = this.root) {
    fn(node);
    for (const c of this.visibleChildren(node)) this.walk(fn, c);
  }

  openPaths() {
    const open = [];
    this.walk((n) => n.expanded && open.push(n.path));
    return open;
  }

  /** The tree page's URL parameters for this view (defaults left out). */
  urlParams() {
    const o = this.opts;
    return {
      model: this.model.name,
      rule: o.rule,
      k: o.k === defaults().k ? null : o.k,
      scoring: o.scoring === defaults().scoring ? null : o.scoring,
      gain: o.gain === defaults().gain ? null : o.gain,
      neg: o.neg ? 1 : null,
      zoom: o.zoom ? null : 0,
      path: (this.selected || this.root).path,
      open: this.openPaths().join(";"),
      hide: [...this.hidden].join(";"),
    };
  }

  /**
   * Fetch `node`'s children (of both signs with the option) and attach them, with the paths
   * of `mustHave` pinned where the ranking leaves them out. Returns the layer below (null at
   * the bottom of the chain), whether the server ranked any child and, without children,
   * the server's one-line reason; null when the tree was rebuilt meanwhile. Throws the
   * ApiError of a failed request.
   */
  async fetchChildren(node, mustHave = []) {
    const gen = this.generation;
    const signs = this.opts.neg ? termNames("signs") : [defaults().sign];
    const answers = await Promise.all(signs.map((sign) => api(`/api/images/${enc(this.image)}/children${this.childQuery(node, sign)}`)));
    if (gen !== this.generation) return null;
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
      const unit = unitFromUrl(path.split("/").pop());
      kids.push(this.makeNode({ unit, path, pinned: true }, node));
    }
    node.children = kids;
    const below = answers[0].layer;
    node.leaf = !below;
    node.expanded = kids.length > 0;
    return { below, ranked: answers[0].children.length > 0, reason: answers[0].reason };
  }

  /** Measure how much `node` depends on its shown children (sets node.faith); false when
   *  the tree was rebuilt meanwhile. */
  async fetchFaithfulness(node) {
    node.faith = "loading";
    const gen = this.generation;
    try {
      const f = await api(`/api/images/${enc(this.image)}/faithfulness${this.childQuery(node, defaults().sign)}`);
      if (gen !== this.generation) return false;
      node.faith = f;
    } catch (err) {
      node.faith = { error: errorText(err) };
    }
    return true;
  }

  /** Fold `node` (the selection moves up to it if it was below). */
  collapse(node) {
    node.expanded = false;
    if (this.selected && isBelow(this.selected, node)) this.selected = node;
  }

  /** Hide `node` from its parent's children (the selection moves up if it was in it). */
  remove(node) {
    this.hidden.add(node.path);
    if (this.selected && (this.selected === node || isBelow(this.selected, node))) this.selected = node.parent;
  }
}

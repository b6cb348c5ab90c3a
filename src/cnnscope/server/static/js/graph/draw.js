// A class's attribution graph (ClassGraph.to_dict()) as SVG: one row per layer, the class
// on top; a unit's circle area and colour show its importance, an edge's width its weight.
// Hovering (or focusing) a node lights its edges and shows its numbers; a click calls back.
// Used by the explorer's class page and by the static export (cnnscope.graph.export).

import { h, mount, num, s } from "../dom.js";
import { clip, middleClip } from "../tree/words.js";
import { COL_W, LEFT, R_MAX, R_MIN, edgePath, layout } from "./layout.js";

const LIGHT = [224, 231, 255];
const DARK = [55, 48, 163];
const CLASS_W = 168;
const CLASS_H = 38;
const RIGHT_PAD = 16;

/** The fill of a unit whose importance is `t` (0..1) of the graph's strongest unit. */
export function importanceColor(t) {
  const u = Math.min(1, Math.max(0, t));
  const c = LIGHT.map((lo, i) => Math.round(lo + (DARK[i] - lo) * u));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** Is this the class node (layer "logits", the first node)? */
export const isClass = (node, data) => node === data.nodes[0] || node.layer === data.layers[0];

/** The scales of a graph: strongest unit per layer and overall, strongest edge per layer pair. */
export function scales(data) {
  const perLayer = new Map();
  let overall = 0;
  for (const n of data.nodes) {
    if (isClass(n, data)) continue;
    const v = Math.max(0, n.importance);
    perLayer.set(n.layer, Math.max(perLayer.get(n.layer) || 0, v));
    overall = Math.max(overall, v);
  }
  const layerOf = new Map(data.nodes.map((n) => [n.id, n.layer]));
  const perPair = new Map();
  for (const e of data.edges) {
    const key = `${layerOf.get(e.source)}>${layerOf.get(e.target)}`;
    perPair.set(key, Math.max(perPair.get(key) || 0, Math.abs(e.weight)));
  }
  const edgeScale = (e) => perPair.get(`${layerOf.get(e.source)}>${layerOf.get(e.target)}`) || 1;
  return { perLayer, overall: overall || 1, edgeScale };
}

/** A unit's radius: its area grows with its importance relative to its layer's strongest. */
export function radius(node, sc) {
  const top = sc.perLayer.get(node.layer) || 1;
  return R_MIN + (R_MAX - R_MIN) * Math.sqrt(Math.max(0, node.importance) / top);
}

/** The legend: what size, colour and width mean, and the pruning thresholds. */
export function legend(data, sc = scales(data)) {
  const t = data.thresholds || {};
  const circles = s(
    "svg",
    { width: 86, height: 2 * R_MAX + 4, "aria-hidden": "true" },
    [0.1, 0.45, 1].map((f, i) => s("circle", { cx: 12 + i * 26 + (i ? 6 : 0), cy: R_MAX + 2, r: R_MIN + (R_MAX - R_MIN) * Math.sqrt(f) * 0.55, class: "cg-legend-mark" })),
  );
  const bar = h("span", { class: "cg-ramp", style: `background: linear-gradient(90deg, ${importanceColor(0)}, ${importanceColor(1)})` });
  const widths = s(
    "svg",
    { width: 60, height: 22, "aria-hidden": "true" },
    [0.15, 0.5, 1].map((f, i) => s("line", { x1: 6 + i * 20, x2: 6 + i * 20, y1: 2, y2: 20, "stroke-width": 0.75 + 5 * f, class: "cg-legend-edge" })),
  );
  const share = Number.isFinite(t.min_edge_share) ? `${+(100 * t.min_edge_share).toFixed(2)}%` : "–";
  return h(
    "div",
    { class: "cg-legend" },
    h("div", { class: "cg-key" }, circles, h("span", {}, "circle area: a unit's importance (mean influence on the class score per image) relative to the strongest unit of its layer")),
    h("div", { class: "cg-key" }, h("span", { class: "cg-ramp-box" }, h("small", {}, "0"), bar, h("small", {}, num(sc.overall))), h("span", {}, "colour: the same importance on one scale for the whole graph")),
    h("div", { class: "cg-key" }, widths, h("span", {}, "edge width: its weight (how much the lower unit feeds the upper one's part of the class score, per image) relative to the strongest edge between the same two layers")),
    h(
      "p",
      { class: "cg-thresholds" },
      `Pruned from the class down: ${t.units_per_layer ?? "–"} units per layer (the top layer's of largest importance; below, those that feed the units kept above most, topped up by importance, so a unit of negative mean importance can stay) and, per unit, its ${t.edges_per_node ?? "–"} strongest edges into the layer below of at least ${share} of the strongest edge between those two layers; edges were summed over each image's top ${t.edge_k ?? "–"} units per layer. The right column gives each layer's cut-offs (smallest importance and smallest edge shown).`,
    ),
  );
}

/** A node's title: "class 281 · tabby" or "blocks.15:87". */
export function nodeTitle(node, data) {
  return isClass(node, data) ? `class ${data.class.index} · ${data.class.label}` : node.id;
}

/** A layer's name in one or two lines of at most `n` characters: broken after a dot where
 *  it is too long (the part that tells layers apart is often in the middle). */
export function nameLines(name, n = 24) {
  if (name.length <= n) return [name];
  const cut = name.lastIndexOf(".", n - 1);
  if (cut < 1) return [middleClip(name, n)];
  return [name.slice(0, cut + 1), middleClip(name.slice(cut + 1), n)];
}

function rowLabel(name, y) {
  const lines = nameLines(name);
  const text = s("text", { x: 12, y: y + 4 - (lines.length - 1) * 7, class: "cg-row-label" }, s("title", {}, name));
  lines.forEach((line, j) => text.append(s("tspan", { x: 12, dy: j ? 14 : 0 }, line)));
  return text;
}

/** The tooltip's lines for a node (also the export's panel numbers). */
export function nodeFacts(node, data) {
  if (isClass(node, data)) {
    return [
      ["class", `${data.class.label} (index ${data.class.index})`],
      ["mean logit", num(node.importance)],
      ["images", String(data.images)],
    ];
  }
  const k = data.thresholds?.edge_k;
  return [
    ["layer", node.layer],
    ["channel", String(node.channel)],
    ["importance", num(node.importance)],
    ["activation", num(node.activation)],
    ["in top " + (k ?? "k"), `${node.top_count ?? 0} of ${data.images} images`],
  ];
}

function tipContent(node, data) {
  const examples = (node.examples || []).slice(0, 4);
  return [
    h("div", { class: "cg-tip-title" }, nodeTitle(node, data)),
    h("table", {}, nodeFacts(node, data).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    node.visualization ? h("img", { class: "cg-vis", src: node.visualization, alt: `feature visualization of ${node.id}` }) : null,
    examples.length
      ? h(
          "div",
          { class: "cg-tip-examples" },
          h("div", { class: "cg-muted" }, "top images"),
          examples.map((ex) => h("div", { class: "cg-ex" }, ex.thumbnail ? h("img", { src: ex.thumbnail, alt: ex.image }) : null, h("span", {}, clip(String(ex.image), 34)), h("span", { class: "cg-muted" }, ` ${num(ex.influence)}`))),
        )
      : null,
  ];
}

/**
 * Draw `data` (ClassGraph.to_dict()) into `container` (emptied first).
 * @param {HTMLElement} container
 * @param {object} data
 * @param {{onSelect?: (node: object, edges: {inputs: object[], outputs: object[]}) => void}} options
 * @returns {{svg: SVGSVGElement, highlight: (id: string|null) => void, select: (id: string) => void, crossings: number, edges: SVGPathElement[]}}
 *  `highlight(id)` lights a node as a hover does (null: none); `select(id)` marks it and calls onSelect.
 */
export function drawClassGraph(container, data, { onSelect } = {}) {
  const sc = scales(data);
  const lay = layout(data);
  const byId = new Map(data.nodes.map((n) => [n.id, n]));
  const svg = s("svg", { class: "cg-svg", width: lay.width, height: lay.height, style: `max-width: ${lay.width}px`, viewBox: `0 0 ${lay.width} ${lay.height}`, role: "group", "aria-label": `attribution graph of class ${data.class.label}` });
  const gRows = s("g", { class: "cg-rows" });
  const gEdges = s("g", { class: "cg-edges" });
  const gNodes = s("g", { class: "cg-nodes" });
  svg.append(gRows, gEdges, gNodes);
  const t = data.thresholds || {};
  lay.rows.forEach((row, i) => {
    const y = row.y;
    const first = i === 0;
    const cut = t.smallest_importance?.[row.layer];
    const edgeCut = t.smallest_edge?.[row.layer];
    gRows.append(
      s("line", { x1: LEFT - 8, x2: lay.width - 12, y1: y, y2: y, class: "cg-row-line" }),
      rowLabel(first ? "class" : row.layer, y),
    );
    if (!first) {
      const lines = [`imp ≥ ${cut == null ? "–" : num(cut)}`];
      if (edgeCut != null) lines.push(`edge ≥ ${num(edgeCut)}`);
      const txt = s("text", { x: lay.width - RIGHT_PAD, y: y - 3, class: "cg-row-cut" });
      lines.forEach((line, j) => txt.append(s("tspan", { x: lay.width - RIGHT_PAD, dy: j ? 14 : 0 }, line)));
      txt.append(s("title", {}, `${row.layer}: smallest importance shown ${cut == null ? "–" : cut}; smallest edge from this layer ${edgeCut == null ? "–" : edgeCut}`));
      gRows.append(txt);
    }
  });
  const radii = new Map();
  for (const n of data.nodes) radii.set(n.id, isClass(n, data) ? CLASS_H / 2 : radius(n, sc));
  const edgeEls = [];
  const incident = new Map(data.nodes.map((n) => [n.id, []]));
  const ordered = [...data.edges].sort((a, b) => Math.abs(a.weight) / sc.edgeScale(a) - Math.abs(b.weight) / sc.edgeScale(b));
  for (const e of ordered) {
    const lo = lay.pos.get(e.source);
    const up = lay.pos.get(e.target);
    if (!lo || !up) continue;
    const rel = Math.abs(e.weight) / sc.edgeScale(e);
    const el = s(
      "path",
      { class: "cg-edge", d: edgePath(lo, up, radii.get(e.source), radii.get(e.target)), "stroke-width": (0.75 + 5 * rel).toFixed(2), "stroke-opacity": (0.25 + 0.55 * rel).toFixed(2), "data-source": e.source, "data-target": e.target },
      s("title", {}, `${e.source} → ${e.target}: weight ${num(e.weight)} per image (${e.count} images)`),
    );
    edgeEls.push(el);
    incident.get(e.source)?.push(el);
    incident.get(e.target)?.push(el);
    gEdges.append(el);
  }
  const nodeEls = new Map();
  for (const n of data.nodes) {
    const p = lay.pos.get(n.id);
    const r = radii.get(n.id);
    const cls = isClass(n, data);
    const g = s("g", { class: `cg-node${cls ? " cg-class" : ""}`, transform: `translate(${p.x},${p.y})`, tabindex: 0, role: "button", "data-id": n.id, "aria-label": nodeTitle(n, data) });
    if (cls) {
      const text = `${clip(String(data.class.label), 36)} · ${data.class.index}`;
      const w = Math.max(CLASS_W, 8 * text.length + 24);
      g.append(s("rect", { class: "cg-mark", x: -w / 2, y: -CLASS_H / 2, width: w, height: CLASS_H, rx: 10 }), s("text", { class: "cg-class-label", y: 5 }, text, s("title", {}, `${data.class.label} (class ${data.class.index})`)));
    } else {
      const half = Math.max(r, 14);
      g.append(s("rect", { class: "cg-hit", x: -half, y: -r, width: 2 * half, height: 2 * r + 16, fill: "transparent" }));
      g.append(s("circle", { class: "cg-mark", r: r.toFixed(2), fill: importanceColor(Math.max(0, n.importance) / sc.overall) }), s("text", { class: "cg-label", y: r + 13 }, String(n.channel)));
    }
    nodeEls.set(n.id, g);
    gNodes.append(g);
  }
  const tip = h("div", { class: "cg-tip", role: "tooltip", hidden: true });
  let lit = null;
  const highlight = (id) => {
    if (lit === id) return;
    for (const el of svg.querySelectorAll(".hl, .on")) el.classList.remove("hl", "on");
    lit = id;
    svg.classList.toggle("cg-lit", id !== null);
    if (id === null) {
      tip.hidden = true;
      return;
    }
    nodeEls.get(id)?.classList.add("on");
    for (const el of incident.get(id) || []) {
      el.classList.add("hl");
      const other = el.dataset.source === id ? el.dataset.target : el.dataset.source;
      nodeEls.get(other)?.classList.add("hl");
    }
    const node = byId.get(id);
    mount(tip, tipContent(node, data));
    tip.hidden = false;
    const box = container.getBoundingClientRect();
    const at = nodeEls.get(id).getBoundingClientRect();
    const right = at.right - box.left + 10;
    const left = at.left - box.left - tip.offsetWidth - 10;
    const fits = right + tip.offsetWidth <= container.clientWidth - 4;
    tip.style.left = `${Math.max(4, fits || left < 4 ? right : left)}px`;
    tip.style.top = `${Math.max(4, at.top - box.top)}px`;
  };
  const edgesOf = (id) => ({
    inputs: data.edges.filter((e) => e.target === id).sort((a, b) => b.weight - a.weight),
    outputs: data.edges.filter((e) => e.source === id).sort((a, b) => b.weight - a.weight),
  });
  const select = (id) => {
    for (const el of svg.querySelectorAll(".cg-node.sel")) el.classList.remove("sel");
    nodeEls.get(id)?.classList.add("sel");
    if (onSelect && byId.has(id)) onSelect(byId.get(id), edgesOf(id));
  };
  for (const [id, g] of nodeEls) {
    g.addEventListener("mouseenter", () => highlight(id));
    g.addEventListener("mouseleave", () => highlight(null));
    g.addEventListener("focus", () => highlight(id));
    g.addEventListener("blur", () => highlight(null));
    g.addEventListener("click", () => select(id));
    g.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        select(id);
      }
    });
  }
  container.classList.add("cg");
  mount(container, legend(data, sc), h("div", { class: "cg-scroll" }, svg), tip);
  return { svg, highlight, select, crossings: lay.crossings, edges: edgeEls };
}


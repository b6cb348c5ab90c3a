// Class page: the attribution graph of one class across a set of images (cnnscope.graph),
// drawn by ../graph/draw.js. A click on a unit opens its unit page; the list under the
// drawing links every unit to the trees of the images where it matters most. Without a
// graph, the page offers to build one over the explorer's images (background lane) and
// shows its progress, then the graph.

import { ApiError, api, enc, pageUrl, pages, query } from "../api.js";
import { crumbs, errorCard, h, mount, num, toast } from "../dom.js";
import { drawClassGraph } from "../graph/draw.js";

const PRUNING = [
  ["units", "units per layer", 1, 64, 1],
  ["edges", "edges per unit", 1, 32, 1],
  ["min_share", "smallest edge share", 0, 0.99, 0.01],
];

/** The graph drawing's stylesheet, linked once. */
function linkStyles() {
  if (document.querySelector("link[data-graph-css]")) return;
  document.head.append(h("link", { rel: "stylesheet", href: "/static/css/graph.css", "data-graph-css": "" }));
}

const shortLabel = (label) => String(label).split(",")[0];

export async function render(app, { class: cls, params, model }) {
  linkStyles();
  const pruning = Object.fromEntries(PRUNING.map(([key]) => [key, params.get(key)]).filter(([, v]) => v !== null && v !== ""));
  let data;
  try {
    data = await api(`/api/graphs/${enc(cls)}${query(pruning)}`);
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    let build;
    try {
      build = await api(`/api/graphs/${enc(cls)}/build`);
    } catch (err2) {
      crumbs([["Gallery", pages.gallery()], ["Class graph"]]);
      mount(app, errorCard("Unknown class", err2.message, [h("a", { class: "btn", href: pages.gallery() }, "Back to the gallery")]));
      return;
    }
    buildPage(app, build, model, err.detail);
    return;
  }
  showGraph(app, data, model, pruning);
}

function head(label, ...rest) {
  document.title = `class graph of ${shortLabel(label)} · cnnscope explorer`;
  crumbs([["Gallery", pages.gallery()], [`Class graph of ${shortLabel(label)}`]]);
  return h("div", { class: "page-head" }, h("div", {}, h("h1", {}, `Class graph of ${shortLabel(label)}`), ...rest));
}

/** No graph yet: a button that builds one, then the build's progress, then the graph. */
function buildPage(app, state, model, why) {
  const box = h("div", { class: "slot graph-build", id: "graph-build" });
  const select = h("select", { id: "graph-select", "aria-label": "which images" }, h("option", { value: "all" }, "every image"), h("option", { value: "predicted" }, `only images predicted as ${shortLabel(state.label)}`));
  const start = h("button", { type: "button", class: "btn btn-primary", id: "graph-start" }, "Build the class graph");
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const got = await api(`/api/graphs/${state.index}${query({ select: select.value, model: model.name })}`, { method: "POST" });
      poll(box, got, model);
    } catch (err) {
      start.disabled = false;
      toast(err.message, "error", 7000);
    }
  });
  mount(
    app,
    h(
      "div",
      { class: "page page-graph" },
      head(state.label, h("p", { class: "muted" }, `class ${state.index} · ${state.label}`)),
      h(
        "section",
        { class: "card" },
        h("p", {}, why),
        h("p", { class: "muted" }, "Build it over the explorer's images (the gallery and your uploads, or the dataset index's folder): it runs in the background, everything else works meanwhile. A few images give a rough graph; for a sharper one run cnnscope graph FOLDER --class NAME --out DIR over many images and serve DIR with --graphs."),
        h("div", { class: "toolbar-group" }, select, start),
        box,
      ),
    ),
  );
  if (state.state === "queued" || state.state === "running") {
    start.disabled = true;
    poll(box, state, model);
  } else if (state.state === "failed" || state.state === "dropped") {
    mount(box, `The last build ${state.state}: ${state.detail || "no reason given"}`);
  }
}

function poll(box, state, model) {
  const show = (st) => {
    const pct = st.total ? Math.round((100 * st.done) / st.total) : 0;
    mount(box, h("div", { class: "progress" }, h("span", { style: `width:${Math.max(3, pct)}%` })), `Building: ${st.done} of ${st.total || "?"} images (${st.state}).`);
  };
  show(state);
  const timer = setInterval(async () => {
    let st;
    try {
      st = await api(`/api/graphs/${state.index}/build`);
    } catch (err) {
      clearInterval(timer);
      mount(box, err.message);
      return;
    }
    if (st.state === "queued" || st.state === "running") {
      show(st);
      return;
    }
    clearInterval(timer);
    if (st.state === "done") window.location.reload();
    else mount(box, `The build ${st.state}: ${st.detail || "no reason given"}`);
  }, 1000);
}

/** The tree page of an example (the server gives it when the explorer has the image). */
const treeHref = (ex) => ex.tree;

function unitHref(node, model) {
  const top = (node.examples || []).find((ex) => ex.image_id);
  return pages.unit(node.id, { model: model.name, image: top ? top.image_id : undefined });
}

function showGraph(app, data, model, pruning) {
  const drawing = h("div", { class: "graph-drawing", id: "graph-drawing" });
  const form = h(
    "form",
    { class: "toolbar graph-pruning", id: "graph-pruning" },
    PRUNING.map(([key, title, min, max, step]) =>
      h("label", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, title), h("input", { type: "number", name: key, min, max, step, value: pruning[key] ?? defaultOf(data, key), style: "width: 5.5em" })),
    ),
    h("button", { type: "submit", class: "btn" }, "Prune"),
    h("div", { class: "toolbar-spacer" }),
    h("a", { class: "btn btn-ghost", id: "graph-export", href: data.export, download: "" }, "Download as HTML"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    window.location.assign(pageUrl("graph", { class: data.class.index }, values));
  });
  mount(
    app,
    h(
      "div",
      { class: "page page-graph" },
      head(data.class.label, h("p", { class: "muted", id: "graph-covers" }, `class ${data.class.index} · ${data.source.covers}`)),
      form,
      h("section", { class: "card" }, drawing, h("p", { class: "muted" }, "Click a unit to open its unit page; hover it for its numbers.")),
      h("section", { class: "card" }, h("h2", { class: "card-title" }, "Where each unit matters most"), nodeList(data, model)),
    ),
  );
  drawClassGraph(drawing, data, { onSelect: (node) => window.location.assign(unitHref(node, model)) });
}

function defaultOf(data, key) {
  const t = data.thresholds || {};
  return { units: t.units_per_layer, edges: t.edges_per_node, min_share: t.min_edge_share }[key];
}

/** An example the explorer does not have yet: a button that adds it (like an upload) and
 *  opens its tree. */
function openButton(data, ex, model) {
  const b = h("button", { type: "button", class: "cg-link graph-open", title: `add it to the explorer and open its tree (influence ${num(ex.influence)})` }, ex.image);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      const got = await api(`/api/graphs/${data.class.index}/examples/open${query({ image: ex.image, path: ex.path, model: model.name })}`, { method: "POST" });
      window.location.assign(got.tree);
    } catch (err) {
      b.disabled = false;
      toast(err.message, "error", 7000);
    }
  });
  return b;
}

/** Per unit: its link, importance and the trees of its top images. */
function nodeList(data, model) {
  const rows = data.nodes.slice(1).map((node) =>
    h(
      "tr",
      { "data-id": node.id },
      h("td", {}, h("a", { href: unitHref(node, model) }, h("code", {}, node.id))),
      h("td", { class: "num" }, num(node.importance)),
      h(
        "td",
        {},
        (node.examples || []).slice(0, 5).map((ex, i) => [
          i ? " · " : "",
          treeHref(ex) ? h("a", { href: treeHref(ex), class: "graph-example", title: `influence ${num(ex.influence)} at (${ex.position.join(", ")})` }, ex.image) : openButton(data, ex, model),
        ]),
      ),
    ),
  );
  return h("table", { class: "graph-nodes" }, h("thead", {}, h("tr", {}, h("th", {}, "unit"), h("th", {}, "importance"), h("th", {}, "trees of the images where it matters most"))), h("tbody", {}, rows));
}

// Image page: the model's view, top-5, an attribution map, and the overview of top units.

import { api, defaults, enc, known, pages, query, splitUnit, termChoices, unitToUrl, vocabulary } from "../api.js";
import { choice, crumbs, errorCard, h, lazyImage, mount, num, pct, spinner } from "../dom.js";

const PER_LAYER = [4, 6, 8, 12, 16];

export async function render(app, { image, params, model }) {
  const info = await api(`/api/images/${enc(image)}`);
  document.title = `${info.name} · cnnscope explorer`;
  crumbs([["Gallery", pages.gallery()], [info.name]]);
  const state = {
    perLayer: clampChoice(Number(params.get("per_layer")), PER_LAYER, 6),
    rule: known("rules", params.get("rule"), defaults().rule),
    method: known("methods", params.get("method"), defaults().method),
    target: params.get("target"),
  };

  const predsBox = h("div", { class: "preds" }, spinner());
  const attrBox = h("div", { class: "attr-body" });
  const overviewBox = h("div", { class: "overview" }, h("div", { class: "loading-block" }, spinner(), " Computing the overview…"));
  const treeLink = h("a", { class: "btn btn-primary", href: "#", id: "open-tree" }, "Open the tree of the top class →");

  mount(
    app,
    h(
      "div",
      { class: "page page-image" },
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", {}, info.name), h("p", { class: "muted" }, info.description, " · ", h("span", { class: `tag tag-${info.source}` }, info.source))),
        h("div", { class: "head-actions" }, h("a", { class: "btn", href: pages.layers(image, { model: model.name }), id: "open-layers", title: "activation mosaics, channel orderings and 3D volumes of any layer" }, "Layer views"), treeLink),
      ),
      h(
        "div",
        { class: "image-top" },
        h(
          "section",
          { class: "card card-input" },
          h("h2", { class: "card-title" }, "What the model sees", h("span", { class: "muted small" }, ` ${model.input_size.join("×")}`)),
          lazyImage(info.input, { alt: `${info.name} as the model sees it`, cls: "model-view" }),
        ),
        h("section", { class: "card card-preds" }, h("h2", { class: "card-title" }, "Top-5 predictions"), predsBox),
        h("section", { class: "card card-attr" }, h("div", { class: "card-title-row" }, h("h2", { class: "card-title" }, "Why this prediction?")), attrBox),
      ),
      h(
        "section",
        { class: "overview-section" },
        h(
          "div",
          { class: "section-head" },
          h("div", {}, h("h2", {}, "Overview"), h("p", { class: "muted" }, "The strongest units in each layer of the chain (by their maximum, read before a ReLU-family activation so that units clipped at 6 do not tie), with their reconstructions (zoomed on the pixels they see). Click one to open its tree.")),
          controlsRow(state, () => loadOverview()),
        ),
        overviewBox,
      ),
    ),
  );

  // Predictions, then the attribution panel for the chosen class.
  let preds = [];
  try {
    preds = (await api(`/api/images/${enc(image)}/predictions${query({ k: 5 })}`)).predictions;
    treeLink.href = treeUrl(image, model, `logits:${preds[0].index}`, state.rule);
    mount(predsBox, preds.map((p, i) => predRow(p, i, image, model, state)));
  } catch (err) {
    mount(predsBox, h("p", { class: "status-error" }, err.message));
  }
  if (state.target === null && preds.length) state.target = String(preds[0].index);
  renderAttribution(attrBox, image, model, state, preds);
  loadOverview();

  async function loadOverview() {
    syncUrl(state);
    mount(overviewBox, h("div", { class: "loading-block" }, spinner(), " Computing the overview…"));
    try {
      const ov = await api(`/api/images/${enc(image)}/overview${query({ per_layer: state.perLayer, rule: state.rule, model: model.name })}`);
      mount(overviewBox, ov.layers.map((layer) => overviewRow(layer, image, model, state)));
    } catch (err) {
      mount(overviewBox, errorCard("Could not compute the overview", err.message));
    }
  }
}

function clampChoice(value, choices, fallback) {
  return choices.includes(value) ? value : fallback;
}

function syncUrl(state) {
  const params = new URLSearchParams(window.location.search);
  params.set("per_layer", state.perLayer);
  params.set("rule", state.rule);
  params.set("method", state.method);
  if (state.target !== null) params.set("target", state.target);
  history.replaceState(null, "", `${window.location.pathname}?${params}`);
}

export function treeUrl(image, model, path, rule = defaults().rule) {
  return pages.tree(image, { model: model.name, rule, path });
}

function predRow(p, i, image, model, state) {
  return h(
    "a",
    { class: "pred", href: treeUrl(image, model, `logits:${p.index}`, state.rule), title: `open the tree of class ${p.index}` },
    h("span", { class: "pred-rank" }, String(i + 1)),
    h("span", { class: "pred-label" }, p.label.split(",")[0], h("span", { class: "muted small" }, ` #${p.index}`)),
    h("span", { class: "pred-bar" }, h("span", { style: `width:${Math.max(2, p.probability * 100).toFixed(1)}%` })),
    h("span", { class: "pred-prob" }, pct(p.probability)),
  );
}

function renderAttribution(box, image, model, state, preds) {
  const img = h("div", { class: "attr-image" });
  const pick = (key) => (value) => {
    state[key] = value;
    draw();
  };
  const methods = vocabulary().methods.map((m) => [m.name, m.slow ? `${m.title} (slow)` : m.title]);
  const methodSel = choice(methods, state.method, pick("method"), { id: "attr-method", "aria-label": "attribution method" });
  const targetSel = choice(
    preds.map((p) => [String(p.index), `${p.label.split(",")[0]} (#${p.index})`]),
    state.target,
    pick("target"),
    { "aria-label": "target class" },
  );
  const note = h(
    "p",
    { class: "muted small" },
    model.attribution_source === "engine" ? "Computed with the engine's guided backprop and Grad-CAM." : "Methods marked slow run many passes and make other requests wait.",
  );
  mount(box, h("div", { class: "attr-controls" }, methodSel, targetSel), img, note);
  function draw() {
    syncUrl(state);
    const url = `/api/images/${enc(image)}/attribution.png${query({ method: state.method, target: state.target, model: model.name })}`;
    mount(img, lazyImage(url, { alt: `${state.method} for class ${state.target}`, cls: "attr-map" }));
  }
  draw();
}

function controlsRow(state, reload) {
  const per = choice(
    PER_LAYER.map((n) => [n, `${n} per layer`]),
    state.perLayer,
    (v) => {
      state.perLayer = Number(v);
      reload();
    },
    { "aria-label": "units per layer", id: "per-layer" },
  );
  const rule = choice(
    termChoices("rules", defaults().rule),
    state.rule,
    (v) => {
      state.rule = v;
      reload();
    },
    { "aria-label": "backward rule", id: "overview-rule" },
  );
  return h("div", { class: "controls" }, per, rule);
}

function overviewRow(layer, image, model, state) {
  const shape = layer.shape.join("×");
  return h(
    "div",
    { class: "ov-layer", "data-layer": layer.layer },
    h("div", { class: "ov-layer-head" }, h("code", { class: "layer-name" }, layer.layer), h("span", { class: "muted small" }, shape), layer.picture ? h("span", { class: "muted small ov-picture" }, layer.picture) : null),
    h(
      "div",
      { class: "ov-units", style: `grid-template-columns: repeat(${Math.min(layer.units.length, 8)}, minmax(0, 1fr))` },
      layer.units.map((u) =>
        h(
          "a",
          {
            class: "unit-tile",
            href: treeUrl(image, model, unitToUrl(u.unit), state.rule),
            title: `${u.unit}${u.label ? " — " + u.label : ""} · strength ${num(u.score)} (max activation; pre-activation max for ReLU-family units)`,
            "data-unit": u.unit,
          },
          lazyImage(`${u.reconstruction}&crop=support`, { alt: `${layer.picture || "reconstruction"} of ${u.unit}`, cls: "tile-img" }),
          h("span", { class: "tile-caption" }, u.label ? h("span", { class: "tile-label" }, u.label.split(",")[0]) : h("code", {}, splitUnit(u.unit).channel), h("span", { class: "muted" }, num(u.score))),
        ),
      ),
    ),
  );
}

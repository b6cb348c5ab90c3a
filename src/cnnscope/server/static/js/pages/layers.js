// Layer views page: every channel of a layer as a clickable mosaic, channel orderings
// (k-means or PCA on a row slice, PCA over whole maps) with their permutation, and the
// stacked maps as a 3D volume drawn by plotly.js, which the server serves from the
// installed plotly Python package (loaded only when the volume is opened; no CDN).
// The URL keeps the layer, ordering, normalisation and view. The orderings and scales, and
// their defaults, are the library's (the vocabulary's orders and normalizations); the two
// views and the k-means picker's sizes are the page's own.

import { api, defaults, enc, errorText, known, pages, query, termChoices, unitFromUrl, unitToUrl, vocabulary } from "../api.js";
import { choice, copyLinkButton, copyText, crumbs, errorCard, h, mount, num, pct, segmented, spinner } from "../dom.js";

const VIEWS = [
  ["mosaic", "Mosaic"],
  ["volume", "3D volume"],
];
const KS = [2, 3, 4, 5, 6, 8, 10, 12, 16];
const MAX_CHIPS = 2048;

export async function render(app, { image, params, model }) {
  const [info, listing] = await Promise.all([api(`/api/images/${enc(image)}`), api(`/api/images/${enc(image)}/layers${query({ model: model.name })}`)]);
  document.title = `Layer views · ${info.name} · cnnscope explorer`;
  crumbs([["Gallery", pages.gallery()], [info.name, pages.image(image, model.name)], ["Layer views"]]);
  const k = Number(params.get("k"));
  const state = {
    layer: unitToUrl(params.get("layer") || listing.default),
    view: VIEWS.some(([v]) => v === params.get("view")) ? params.get("view") : "mosaic",
    order: known("orders", params.get("order"), defaults().order),
    normalize: known("normalizations", params.get("normalize"), defaults().normalize),
    k: KS.includes(k) ? k : null,
  };
  new LayersView(app, { image, info, model, listing, state }).start();
}

class LayersView {
  constructor(app, { image, info, model, listing, state }) {
    this.image = image;
    this.info = info;
    this.model = model;
    this.listing = listing;
    this.state = state;
    this.generation = 0;
    this.meta = null;
    this.buildDom(app);
  }

  // ---------------------------------------------------------------- DOM skeleton
  buildDom(app) {
    const st = this.state;
    const withMaps = this.listing.layers.filter((l) => l.maps);
    const option = (l) => h("option", { value: l.url_name, selected: l.url_name === st.layer }, `${l.name} · ${l.shape.join("×")}`);
    const layerSel = h(
      "select",
      { class: "select", id: "layer-select", "aria-label": "layer" },
      h("optgroup", { label: "Tree chain" }, withMaps.filter((l) => l.in_chain).map(option)),
      h("optgroup", { label: "Other layers" }, withMaps.filter((l) => !l.in_chain).map(option)),
    );
    if (!withMaps.some((l) => l.url_name === st.layer)) {
      layerSel.prepend(h("option", { value: st.layer, selected: true }, st.layer));
    }
    layerSel.addEventListener("change", () => this.set("layer", layerSel.value));
    this.viewSeg = segmented(VIEWS, st.view, (v) => this.set("view", v), "view");
    this.viewSeg.id = "opt-view";
    const orderSeg = segmented(termChoices("orders"), st.order, (v) => this.set("order", v), "channel ordering");
    orderSeg.id = "opt-order";
    this.kSel = choice(
      [["", `k = auto (${defaults().clusters})`], ...KS.map((n) => [n, `k = ${n}`])],
      st.k ?? "",
      (v) => this.set("k", v ? Number(v) : null),
      { id: "opt-k", "aria-label": "k-means clusters", title: "number of k-means clusters" },
    );
    this.normSeg = segmented(termChoices("normalizations"), st.normalize, (v) => this.set("normalize", v), "normalisation");
    this.normSeg.id = "opt-normalize";
    this.normGroup = h("div", { class: "toolbar-group", title: vocabulary().normalizations.map((t) => `${t.title.toLowerCase()}: ${t.help}`).join("; ") }, h("span", { class: "toolbar-label" }, "Scale"), this.normSeg);
    const copy = copyLinkButton();

    this.title = h("h1", {}, "Layer views");
    this.subtitle = h("p", { class: "muted" }, "");
    this.body = h("div", { class: "layers-main" });
    this.side = h("aside", { class: "card layers-side", id: "order-panel", "aria-label": "channel order" });
    mount(
      app,
      h(
        "div",
        { class: "page page-layers" },
        h(
          "div",
          { class: "page-head" },
          h("div", {}, this.title, this.subtitle),
          h("div", { class: "head-actions" }, copy, h("a", { class: "btn", href: pages.image(this.image, this.model.name) }, `Back to ${this.info.name}`)),
        ),
        h(
          "div",
          { class: "toolbar layers-toolbar" },
          h("a", { class: "toolbar-image", href: pages.image(this.image, this.model.name) }, h("img", { src: this.info.thumbnail, alt: "", class: "toolbar-thumb" }), h("span", {}, this.info.name)),
          h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Layer"), layerSel),
          h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "View"), this.viewSeg),
          h("div", { class: "toolbar-group" }, h("span", { class: "toolbar-label" }, "Order"), orderSeg, this.kSel),
          this.normGroup,
        ),
        h("div", { class: "layers-body" }, this.body, this.side),
      ),
    );
    this.syncControls();
  }

  syncControls() {
    this.kSel.hidden = this.state.order !== "kmeans";
    this.normGroup.classList.toggle("disabled", this.state.view === "volume");
    for (const b of this.normSeg.querySelectorAll("button")) b.disabled = this.state.view === "volume";
  }

  set(key, value) {
    if (this.state[key] === value) return;
    this.state[key] = value;
    this.syncControls();
    this.start();
  }

  syncUrl() {
    const st = this.state;
    const params = {
      model: this.model.name,
      layer: st.layer,
      order: st.order === defaults().order ? null : st.order,
      k: st.order === "kmeans" ? st.k : null,
      normalize: st.normalize === defaults().normalize ? null : st.normalize,
      view: st.view === "mosaic" ? null : st.view,
    };
    history.replaceState(null, "", pages.layers(this.image, params));
  }

  // ---------------------------------------------------------------- loading
  async start() {
    const gen = ++this.generation;
    const st = this.state;
    this.syncUrl();
    mount(this.body, h("div", { class: "card loading-block" }, spinner(), st.view === "volume" ? " Stacking the maps…" : " Drawing the mosaic…"));
    mount(this.side, h("div", { class: "loading-block" }, spinner()));
    const params = { order: st.order, normalize: st.normalize, k: st.order === "kmeans" ? st.k : null, model: this.model.name };
    let meta;
    try {
      meta = await api(`/api/images/${enc(this.image)}/layers/${enc(st.layer)}/mosaic${query(params)}`);
    } catch (err) {
      if (gen !== this.generation) return;
      this.subtitle.textContent = `${this.info.name} · ${unitFromUrl(st.layer)}`;
      mount(this.body, errorCard("This layer cannot be shown", errorText(err)));
      mount(this.side, h("p", { class: "muted small" }, "Pick a layer with channel maps."));
      return;
    }
    if (gen !== this.generation) return;
    this.meta = meta;
    const [c, hh, ww] = meta.shape;
    this.title.textContent = meta.layer;
    this.subtitle.textContent = `${this.info.name} · ${meta.kind} · ${c} maps of ${hh}×${ww}`;
    this.renderOrder(meta);
    if (st.view === "volume") await this.renderVolume(meta, gen);
    else this.renderMosaic(meta);
  }

  // ---------------------------------------------------------------- mosaic
  treeUrl(channel) {
    return pages.tree(this.image, { model: this.model.name, rule: defaults().rule, path: `${this.meta.url_name}:${channel}` });
  }

  renderMosaic(meta) {
    const tip = h("div", { class: "mosaic-tip", hidden: true });
    const img = h("img", { class: "mosaic-img", src: meta.png, alt: `activation mosaic of ${meta.layer}`, width: meta.width, height: meta.height, draggable: "false" });
    const wrap = h("div", { class: "mosaic-wrap loading", style: `max-width:${meta.width}px`, id: "mosaic" }, img);
    img.addEventListener("load", () => wrap.classList.remove("loading"));
    img.addEventListener("error", () => {
      wrap.classList.remove("loading");
      mount(wrap, h("div", { class: "img-error" }, "could not draw the mosaic"));
    });
    const hits = h("div", { class: "mosaic-hits" });
    const pctOf = (v, total) => `${((100 * v) / total).toFixed(4)}%`;
    for (const t of meta.tiles) {
      const label = `channel ${t.channel}: max ${num(t.max)}, mean ${num(t.mean)}`;
      const a = h("a", {
        class: "mosaic-hit",
        href: meta.tree ? this.treeUrl(t.channel) : null,
        "data-channel": t.channel,
        "data-position": t.position,
        "aria-label": meta.tree ? `${label}; open its tree` : label,
        style: `left:${pctOf(t.x, meta.width)};top:${pctOf(t.y, meta.height)};width:${pctOf(t.w, meta.width)};height:${pctOf(t.h, meta.height)}`,
      });
      a.__tile = t;
      hits.append(a);
    }
    hits.addEventListener("mousemove", (ev) => {
      const a = ev.target.closest(".mosaic-hit");
      if (!a) {
        tip.hidden = true;
        return;
      }
      const t = a.__tile;
      mount(
        tip,
        h("div", { class: "mosaic-tip-title" }, `channel ${t.channel}`, meta.ordering ? h("span", { class: "muted" }, ` · position ${t.position}`) : null),
        h("div", {}, `max ${num(t.max)} · mean ${num(t.mean)}`),
        meta.separators.length ? h("div", { class: "muted" }, `cluster ${t.cluster + 1}`) : null,
        meta.tree ? h("div", { class: "muted small" }, "click: open its tree") : null,
      );
      tip.hidden = false;
      const box = wrap.getBoundingClientRect();
      const x = ev.clientX - box.left;
      const y = ev.clientY - box.top;
      const flip = x > box.width - 200;
      tip.style.left = `${flip ? x - 14 - tip.offsetWidth : x + 14}px`;
      tip.style.top = `${y + 16}px`;
    });
    hits.addEventListener("mouseleave", () => (tip.hidden = true));
    wrap.append(hits, tip);
    const scale = meta.normalize === "joint" ? `one colour scale for the layer (${num(meta.tiles[0]?.vmin)} to ${num(meta.tiles[0]?.vmax)})` : "each map on its own scale";
    mount(
      this.body,
      h(
        "section",
        { class: "card mosaic-card" },
        h("div", { class: "card-title-row" }, h("h2", { class: "card-title" }, "Activation mosaic"), h("span", { class: "muted small" }, `${meta.tiles.length} channels · ${scale} · viridis`)),
        wrap,
        h("p", { class: "muted small mosaic-note" }, meta.tree ? "Hover a tile for its channel, max and mean; click it to open that unit's tree." : "Hover a tile for its channel, max and mean."),
      ),
    );
  }

  // ---------------------------------------------------------------- order panel
  renderOrder(meta) {
    const o = meta.ordering;
    let what;
    if (!o) what = "Channels in their own order. Pick an ordering to group similar maps.";
    else if (o.method === "kmeans") what = `K-means on row ${o.row} of every map: ${o.k} clusters (${(o.sizes || []).join(" · ")}), from the darkest centroid to the brightest.`;
    else if (o.method === "pca-slice") what = `PCA on row ${o.row} of every map, sorted by the score on the first component (${pct(o.explained_variance, 0)} of the variance).`;
    else what = `PCA over whole maps, sorted by the score on the principal image (${pct(o.explained_variance, 0)} of the variance).`;
    const groups = [];
    const bounds = [0, ...meta.separators, meta.permutation.length];
    for (let i = 0; i + 1 < bounds.length; i++) groups.push(meta.permutation.slice(bounds[i], bounds[i + 1]));
    let shown = 0;
    const list = h(
      "div",
      { class: "perm-list", id: "permutation", "aria-label": "permutation: the channel shown at each position" },
      groups.map((g, i) =>
        h(
          "div",
          { class: "perm-group" },
          groups.length > 1 ? h("div", { class: "perm-group-head" }, `cluster ${i + 1}`, h("span", { class: "muted" }, ` · ${g.length}`)) : null,
          h(
            "div",
            { class: "perm-chips" },
            g.map((ch) => (shown++ < MAX_CHIPS ? h("span", { class: "perm-chip", "data-channel": ch }, String(ch)) : null)),
          ),
        ),
      ),
    );
    list.addEventListener("mouseover", (ev) => this.highlight(ev.target.closest(".perm-chip")?.dataset.channel));
    list.addEventListener("mouseleave", () => this.highlight(null));
    const copy = h("button", { type: "button", class: "btn btn-ghost btn-sm", title: "copy the permutation as a list" }, "Copy");
    copy.addEventListener("click", () => copyText(`[${meta.permutation.join(", ")}]`, "Permutation copied", "The permutation:"));
    mount(
      this.side,
      h("div", { class: "card-title-row" }, h("h2", { class: "card-title" }, "Order"), o ? copy : null),
      h("p", { class: "small order-what" }, what),
      h("p", { class: "muted small" }, "Position by position, the channel shown (tiles left to right, then down; slices bottom to top)."),
      list,
    );
  }

  highlight(channel) {
    for (const a of this.body.querySelectorAll(".mosaic-hit.hl")) a.classList.remove("hl");
    if (channel === undefined || channel === null) return;
    const a = this.body.querySelector(`.mosaic-hit[data-channel="${channel}"]`);
    if (a) a.classList.add("hl");
  }

  // ---------------------------------------------------------------- volume
  async renderVolume(meta, gen) {
    let fig;
    try {
      const [, figure] = await Promise.all([loadPlotly(this.listing.plotly_js), api(meta.volume)]);
      fig = figure;
    } catch (err) {
      if (gen === this.generation) mount(this.body, errorCard("The 3D view cannot be shown", String(err.message || err)));
      return;
    }
    if (gen !== this.generation) return;
    const c = meta.permutation.length;
    const start = fig.layout.sliders && fig.layout.sliders[0] ? fig.layout.sliders[0].active : Math.floor(c / 2);
    // Our own slider replaces the figure's (one control, keyboard friendly, channel readout).
    const layout = { ...fig.layout, sliders: [], autosize: true };
    const plot = h("div", { class: "volume-plot", id: "volume-plot" });
    const slider = h("input", { type: "range", id: "slice-slider", min: 0, max: c - 1, step: 1, value: start, "aria-label": "slice" });
    const readout = h("span", { class: "slice-readout", id: "slice-readout" });
    const unitLink = h("a", { class: "btn btn-sm", id: "slice-tree" }, "Open its tree →");
    const show = (k) => {
      const ch = meta.permutation[k];
      mount(readout, h("strong", {}, `channel ${ch}`), h("span", { class: "muted" }, ` · slice ${k + 1} of ${c}`));
      unitLink.hidden = !meta.tree;
      unitLink.href = this.treeUrl(ch);
    };
    show(start);
    mount(
      this.body,
      h(
        "section",
        { class: "card volume-card" },
        h("div", { class: "card-title-row" }, h("h2", { class: "card-title" }, "3D volume"), h("span", { class: "muted small" }, "maps stacked in display order; drag to turn, scroll to zoom")),
        plot,
        h("div", { class: "slice-row" }, h("label", { for: "slice-slider", class: "toolbar-label" }, "Slice"), slider, readout, unitLink),
      ),
    );
    await window.Plotly.newPlot(plot, { data: fig.data, layout, frames: fig.frames, config: { displaylogo: false, responsive: true } });
    if (gen !== this.generation) return;
    plot.classList.add("ready");
    let pending = null;
    let busy = false;
    const go = async (k) => {
      pending = k;
      if (busy) return;
      busy = true;
      while (pending !== null) {
        const next = pending;
        pending = null;
        await window.Plotly.animate(plot, [String(next)], { mode: "immediate", frame: { duration: 0, redraw: true }, transition: { duration: 0 } });
      }
      busy = false;
    };
    slider.addEventListener("input", () => {
      const k = Number(slider.value);
      show(k);
      go(k);
    });
  }
}

let plotlyPromise = null;
/** plotly.js from the server (the installed plotly package), loaded once, on demand. */
function loadPlotly(url) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = h("script", { src: url, async: true });
      script.addEventListener("load", () => (window.Plotly ? resolve(window.Plotly) : reject(new Error("plotly.js loaded but did not start"))));
      script.addEventListener("error", () => {
        plotlyPromise = null;
        script.remove();
        reject(new Error("could not load plotly.js from the server"));
      });
      document.head.append(script);
    });
  }
  return plotlyPromise;
}

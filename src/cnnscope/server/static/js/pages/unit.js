// Unit page: what a unit is, where it fires on an image, the units it feeds, its
// feature visualization, and its dataset examples: the grid, then one card per example
// (receptive-field patch, activation, image) that opens the example image's tree.

import { ApiError, api, defaults, enc, errorText, pages, query, unitFromUrl, unitToUrl } from "../api.js";
import { crumbs, errorCard, h, lazyImage, mount, num, parentLink, spinner, toast } from "../dom.js";
import { covers, examplesSlot, watch } from "../examples.js";
import { visualizationSlot } from "../vis.js";

export async function render(app, { unit, params, model }) {
  const image = params.get("image");
  const rule = params.get("rule") || defaults().rule;
  let info;
  try {
    info = await api(`/api/units/${enc(unit)}`);
  } catch (err) {
    crumbs([["Gallery", pages.gallery()], ["Unit"]]);
    mount(app, errorCard("Unknown unit", err.message, [h("a", { class: "btn", href: pages.gallery() }, "Back to the gallery")]));
    return;
  }
  let imageInfo = null;
  if (image) {
    try {
      imageInfo = await api(`/api/images/${enc(image)}`);
    } catch (err) {
      mount(app, errorCard("Unknown image", err.message, [h("a", { class: "btn", href: pages.gallery() }, "Back to the gallery")]));
      return;
    }
  }
  document.title = `${info.unit} · cnnscope explorer`;
  crumbs([["Gallery", pages.gallery()], ...(imageInfo ? [[imageInfo.name, pages.image(image, model.name)]] : []), [info.unit]]);
  const urlUnit = unitToUrl(info.unit);
  const spatial = info.shape.length === 3;
  const parentsBox = h("div", { class: "parents-box" });
  mount(
    app,
    h(
      "div",
      { class: "page page-unit" },
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", {}, info.label ? info.label.split(",")[0] : h("code", {}, info.unit)), h("p", { class: "muted" }, info.label ? h("code", {}, info.unit) : null, info.label ? " · " : "", `channel ${info.channel} of ${info.layer} (${info.kind})`)),
        imageInfo && info.in_chain ? h("a", { class: "btn btn-primary", href: pages.tree(image, { model: model.name, rule, path: urlUnit }) }, "Open its tree →") : null,
      ),
      h(
        "div",
        { class: "unit-grid" },
        h(
          "div",
          { class: "unit-side" },
          h(
            "section",
            { class: "card" },
            h("h2", { class: "card-title" }, "About this unit"),
            h(
              "dl",
              { class: "facts" },
              h("dt", {}, "Layer"),
              h("dd", {}, h("code", {}, info.layer), ` · ${info.kind}`),
              h("dt", {}, "Shape"),
              h("dd", {}, info.shape.join(" × ")),
              h("dt", {}, "Receptive field"),
              h("dd", {}, info.rf_size ? `${info.rf_size.join(" × ")} px` : "the whole image"),
              h("dt", {}, "In the chain"),
              h("dd", {}, info.in_chain ? `yes · above: ${info.layer_above || "—"} · below: ${info.layer_below || "—"}` : "no"),
            ),
          ),
          h(
            "section",
            { class: "card" },
            h("h2", { class: "card-title" }, "Feature visualization"),
            visualizationSlot(info.unit, model),
          ),
        ),
        imageInfo
          ? h(
              "section",
              { class: "card" },
              h("h2", { class: "card-title" }, `On ${imageInfo.name}`),
              h(
                "div",
                { class: "panel-images" },
                h("figure", {}, lazyImage(`/api/images/${enc(image)}/reconstruction.png${query({ path: urlUnit, rule, model: model.name, crop: "support" })}`, { alt: `reconstruction of ${info.unit}`, cls: "panel-img" }), h("figcaption", {}, `Reconstruction (${rule})`)),
                spatial ? h("figure", {}, lazyImage(`/api/images/${enc(image)}/activation.png${query({ unit: urlUnit, model: model.name })}`, { alt: `activation of ${info.unit}`, cls: "panel-img" }), h("figcaption", {}, "Where it fires")) : null,
              ),
            )
          : h("section", { class: "card" }, h("h2", { class: "card-title" }, "On an image"), h("p", { class: "muted" }, "Open this page from an image to see where the unit fires.")),
        h(
          "section",
          { class: "card card-wide examples-card" },
          h("h2", { class: "card-title" }, "Dataset examples"),
          examplesSlot(info.unit, { cls: "panel-img examples-grid" }),
          exampleCards(urlUnit, spatial),
        ),
        imageInfo && info.layer_above ? h("section", { class: "card card-wide" }, h("h2", { class: "card-title" }, `Units of ${info.layer_above} it feeds most`), parentsBox) : null,
      ),
    ),
  );
  if (imageInfo && info.layer_above) loadParents(parentsBox, image, urlUnit, rule, model);
}

async function loadParents(box, image, unit, rule, model) {
  mount(box, h("div", { class: "loading-block" }, spinner(), " Finding the units above…"));
  try {
    const ans = await api(`/api/images/${enc(image)}/parents${query({ unit, k: 6, rule, model: model.name })}`);
    if (!ans.parents.length) {
      mount(box, h("p", { class: "muted" }, `On this image ${unitFromUrl(unit)} feeds no unit of ${ans.layer}: the path from it upward is silent here.`));
      return;
    }
    mount(
      box,
      h(
        "div",
        { class: "parents-grid" },
        ans.parents.map((p) =>
          parentLink(p, pages.tree(image, { model: model.name, rule, path: p.path, open: p.path.split("/")[0] })),
        ),
      ),
    );
  } catch (err) {
    mount(box, h("p", { class: "status-error" }, errorText(err)));
  }
}

/** One card per dataset example, once the index is ready (the grid slot explains why not). */
function exampleCards(unit, spatial) {
  const box = h("div", { class: "example-cards", "data-unit": unit });
  let started = false;
  let fetched = false;
  watch(
    (state) => {
      started = true;
      if (state.state !== "ready" || fetched || !covers(state, unit)) return; // (no 404 to log)
      fetched = true;
      loadExampleCards(box, unit, spatial);
    },
    () => !started || box.isConnected,
  );
  return box;
}

async function loadExampleCards(box, unit, spatial) {
  mount(box, h("div", { class: "loading-block" }, spinner(), " Reading the examples…"));
  let list;
  try {
    list = await api(`/api/units/${enc(unit)}/examples`);
  } catch (err) {
    // a 404 (a layer the index lacks) is already said by the grid slot above
    if (err instanceof ApiError && err.status === 404) mount(box);
    else mount(box, h("p", { class: "status-error" }, err.message));
    return;
  }
  if (!list.length) {
    mount(box);
    return;
  }
  mount(
    box,
    h("p", { class: "muted small examples-note" }, `Its top ${list.length} examples, strongest first: each image cut to the unit's receptive field where the unit fires most. Open one to see its tree from that unit.`),
    h("div", { class: "example-list" }, list.map((ex) => exampleCard(ex, spatial))),
  );
}

function exampleCard(ex, spatial) {
  const open = h("button", { type: "button", class: "btn btn-sm btn-primary example-open" }, "Open its tree");
  open.addEventListener("click", async () => {
    open.disabled = true;
    mount(open, spinner("spinner-sm"), " Opening…");
    try {
      const ans = await api(ex.open, { method: "POST" });
      window.location.assign(ans.tree);
    } catch (err) {
      toast(`Could not open example ${ex.rank}: ${err.message}`, "error");
      open.disabled = false;
      mount(open, "Open its tree");
    }
  });
  return h(
    "article",
    { class: "example-card", "data-rank": ex.rank, "data-unit": ex.unit },
    h("div", { class: "example-patch" }, lazyImage(ex.patch, { alt: `${ex.image}: the receptive field of ${ex.unit}`, cls: "example-img" }), h("span", { class: "example-rank" }, `#${ex.rank}`)),
    h("div", { class: "example-act" }, h("strong", {}, num(ex.activation)), spatial ? h("span", { class: "muted small", title: "where in the feature map: row, column" }, ` at ${ex.y}, ${ex.x}`) : null),
    h("div", { class: "example-name", title: ex.id }, ex.image),
    h("div", { class: "example-aug muted small" }, ex.augmentation || "original"),
    open,
  );
}

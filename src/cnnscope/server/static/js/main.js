// The explorer's front end: one shell, one module per page, routed by the URL path.

import { ApiError, getModel, getVocabulary, pages } from "./api.js";
import { crumbs, errorCard, h, mount } from "./dom.js";

/** One route per page of the vocabulary: its URL template as a pattern, its module
 *  (pages/<name>.js) and the names of its placeholders. */
function routes(templates) {
  return Object.entries(templates).map(([name, template]) => {
    const names = [...template.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
    const body = template
      .split(/\{\w+\}/)
      .map((part) => part.replace(/[.*+?^$()|[\]\\]/g, "\\$&"))
      .join("([^/]+)");
    const pattern = new RegExp(`^${body}${template.endsWith("/") ? "" : "\\/?"}$`);
    return [pattern, () => import(`./pages/${name}.js`), names];
  });
}

async function start() {
  const app = document.getElementById("app");
  const badge = document.getElementById("model-badge");
  let model;
  let vocabulary;
  try {
    [model, vocabulary] = await Promise.all([getModel(), getVocabulary()]);
    badge.textContent = model.name;
  } catch (err) {
    mount(app, errorCard("The explorer is not answering", err.message));
    return;
  }
  const path = window.location.pathname;
  const params = new URLSearchParams(window.location.search);
  const wanted = params.get("model");
  if (wanted && wanted !== model.name) {
    crumbs([["Gallery", pages.gallery()], ["Wrong model"]]);
    mount(
      app,
      errorCard(
        "This link was made for another model",
        `The link asks for model “${wanted}”, but this server runs “${model.name}”. ` +
          `Restart it with cnnscope serve --model ${wanted}, or open the link on this model.`,
        [
          h("a", { class: "btn", href: window.location.pathname + "?" + withModel(params, model.name) }, `Open with ${model.name}`),
          h("a", { class: "btn btn-ghost", href: pages.gallery() }, "Gallery"),
        ],
      ),
    );
    return;
  }
  for (const [pattern, load, names] of routes(vocabulary.pages)) {
    const match = path.match(pattern);
    if (!match) continue;
    const args = {};
    names.forEach((name, i) => {
      try {
        args[name] = decodeURIComponent(match[i + 1]);
      } catch (_) {
        args[name] = match[i + 1];
      }
    });
    try {
      const page = await load();
      await page.render(app, { ...args, params, model });
    } catch (err) {
      console.error(err);
      const detail = err instanceof ApiError ? err.detail : String(err.message || err);
      mount(app, errorCard("Something went wrong", detail, [h("a", { class: "btn", href: pages.gallery() }, "Back to the gallery")]));
    }
    return;
  }
  crumbs([["Gallery", pages.gallery()], ["Not found"]]);
  mount(
    app,
    errorCard("Page not found", `There is no page at ${path}.`, [h("a", { class: "btn", href: pages.gallery() }, "Back to the gallery")]),
  );
}

function withModel(params, name) {
  const copy = new URLSearchParams(params);
  copy.set("model", name);
  return copy.toString();
}

start();

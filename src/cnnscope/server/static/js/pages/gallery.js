// Gallery: built-in photos, the --gallery folder, uploads (file picker and drag and drop).

import { ApiError, api, pages, query, vocabulary } from "../api.js";
import { crumbs, errorCard, h, mount, spinner, toast } from "../dom.js";
import { indexBanner } from "../examples.js";

export async function render(app, { model }) {
  document.title = "Gallery · cnnscope explorer";
  crumbs([["Gallery"]]);
  const status = h("p", { class: "upload-status", "aria-live": "polite" });
  const input = h("input", { type: "file", accept: "image/*", id: "file-input", class: "visually-hidden", multiple: true });
  const zone = h(
    "label",
    { class: "dropzone", for: "file-input", id: "dropzone" },
    h("span", { class: "dropzone-icon", "aria-hidden": "true" }, uploadIcon()),
    h("span", { class: "dropzone-title" }, "Drop an image here, or ", h("u", {}, "choose a file")),
    h("span", { class: "dropzone-hint" }, `JPEG, PNG, WebP, BMP, GIF or TIFF · up to ${model.max_upload_mb} MB`),
  );
  const grid = h("div", { class: "gallery-sections" }, h("div", { class: "loading-block" }, spinner()));
  mount(
    app,
    h(
      "div",
      { class: "page page-gallery" },
      indexBanner(),
      h(
        "section",
        { class: "hero" },
        h("div", {}, h("h1", {}, "Pick an image"), h("p", { class: "lead" }, "See how ", h("strong", {}, model.name), " builds its prediction: the top units of each layer, and a tree of the neurons that feed them.")),
        h("div", { class: "upload" }, input, zone, status),
      ),
      grid,
    ),
  );

  // One file uploaded: open it (its page is what the user came for). Several: stay here,
  // each one listed in the gallery, the last one linked.
  const upload = async (files) => {
    let opened = null;
    for (const file of files) {
      status.replaceChildren(spinner("spinner-sm"), ` Uploading ${file.name}…`);
      try {
        const out = await api(`/api/images${query({ name: file.name })}`, {
          method: "POST",
          body: file,
          headers: { "Content-Type": file.type || "application/octet-stream", Accept: "application/json" },
        });
        status.replaceChildren(`Added ${out.name}. `, h("a", { href: out.page, id: "open-upload" }, "Open it →"));
        toast(out.created ? `Uploaded ${out.name}` : `${out.name} was already in the gallery`);
        opened = files.length === 1 ? out.page : null;
        if (!opened) await fill(grid, model);
      } catch (err) {
        const detail = err instanceof ApiError ? err.detail : String(err);
        status.replaceChildren(h("span", { class: "status-error", role: "alert" }, `Upload refused: ${detail}`));
        toast(`Upload refused: ${detail}`, "error");
      }
    }
    if (opened) window.location.assign(opened);
  };
  input.addEventListener("change", () => upload([...input.files]).finally(() => (input.value = "")));
  const over = (on) => (e) => {
    e.preventDefault();
    zone.classList.toggle("dragover", on);
  };
  // One set of listeners on the whole page: dropping anywhere uploads (once).
  document.body.addEventListener("dragover", over(true));
  document.body.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) over(false)(e);
  });
  document.body.addEventListener("drop", (e) => {
    over(false)(e);
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) upload(files);
  });
  await fill(grid, model);
}

async function fill(grid, model) {
  let data;
  try {
    data = await api("/api/images");
  } catch (err) {
    mount(grid, errorCard("Could not list the images", err.message));
    return;
  }
  const bySource = Object.groupBy ? Object.groupBy(data.images, (i) => i.source) : group(data.images);
  mount(
    grid,
    // one section per image source, in the vocabulary's order, with its title and help
    vocabulary().sources.filter(({ name }) => bySource[name]?.length).map(({ name: key, title, help: hint }) =>
      h(
        "section",
        { class: "gallery-section" },
        h("div", { class: "section-head" }, h("h2", {}, title), h("span", { class: "muted" }, hint)),
        h("div", { class: "gallery-grid" }, bySource[key].map((img) => card(img, model))),
      ),
    ),
  );
}

function group(items) {
  const out = {};
  for (const item of items) (out[item.source] ||= []).push(item);
  return out;
}

function card(img, model) {
  return h(
    "a",
    { class: "image-card", href: pages.image(img.id, model.name), "data-image": img.id },
    h("div", { class: "thumb" }, h("img", { src: img.thumbnail, alt: img.name, loading: "lazy" })),
    h("div", { class: "image-card-body" }, h("strong", {}, img.name), h("span", { class: "muted" }, img.description)),
  );
}

function uploadIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "28");
  svg.setAttribute("height", "28");
  svg.innerHTML =
    '<path d="M12 16V4m0 0-4.5 4.5M12 4l4.5 4.5" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>' +
    '<path d="M4 15v3a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2v-3" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>';
  return svg;
}

// A class-graph node's numbers in full: what the static export shows in its side panel when
// a node is clicked (the explorer goes to the unit page instead).

import { h, num } from "../dom.js";
import { nodeFacts, nodeTitle } from "./draw.js";

function edgeList(title, edges, end, onPick) {
  if (!edges.length) return null;
  return h(
    "div",
    { class: "cg-panel-edges" },
    h("h3", {}, title),
    h(
      "ul",
      {},
      edges.map((e) => h("li", {}, h("button", { type: "button", class: "cg-link", onclick: () => onPick(e[end]) }, e[end]), h("span", { class: "cg-muted" }, ` ${num(e.weight)}`))),
    ),
  );
}

/** The panel of `node`: its numbers, its strongest edges (buttons that pick the other end
 *  with `onPick(id)`), its feature visualization and top images where the graph has them;
 *  `imageHref(example)`, where given, links each image (the explorer: its tree page). */
export function nodePanel(node, data, { inputs, outputs }, onPick = () => {}, imageHref = null) {
  const examples = node.examples || [];
  return h(
    "div",
    { class: "cg-panel-body" },
    h("h2", {}, nodeTitle(node, data)),
    h("table", { class: "cg-facts" }, nodeFacts(node, data).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    node.visualization ? h("img", { class: "cg-vis", src: node.visualization, alt: `feature visualization of ${node.id}` }) : null,
    edgeList("fed by (layer below)", inputs, "source", onPick),
    edgeList("feeds (layer above)", outputs, "target", onPick),
    examples.length
      ? h(
          "div",
          { class: "cg-panel-examples" },
          h("h3", {}, "images where it matters most"),
          h(
            "ol",
            {},
            examples.map((ex) =>
              h(
                "li",
                {},
                ex.thumbnail ? h("img", { src: ex.thumbnail, alt: ex.image }) : null,
                imageHref ? h("a", { href: imageHref(ex) }, h("code", {}, String(ex.image))) : h("code", {}, String(ex.image)),
                h("span", { class: "cg-muted" }, ` influence ${num(ex.influence)}`, Array.isArray(ex.position) ? ` at (${ex.position.join(", ")})` : ""),
              ),
            ),
          ),
        )
      : null,
  );
}

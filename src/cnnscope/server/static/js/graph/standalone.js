// The static export's page (cnnscope.graph.export): read the graph from the page's JSON
// script element, draw it, and show a clicked node's numbers in the side panel.

import { mount } from "../dom.js";
import { drawClassGraph } from "./draw.js";
import { nodePanel } from "./panel.js";

const data = JSON.parse(document.getElementById("cg-data").textContent);
const panel = document.getElementById("cg-panel");
const drawing = drawClassGraph(document.getElementById("cg-graph"), data, {
  onSelect: (node, edges) => {
    mount(panel, nodePanel(node, data, edges, (id) => drawing.select(id)));
    panel.hidden = false;
  },
});
window.cnnscopeGraph = { data, drawing };

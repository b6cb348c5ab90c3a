// The hover popover: a node's dataset examples. It opens only once it has something to
// show (never empty), and is placed beside the node inside the drawing area (never cut off
// by the window's edge).

import { h, mount } from "../dom.js";
import { examplesSlot } from "../examples.js";

const DELAY_MS = 450;

export class Popover {
  /** The popover lives in `canvas` (its positioned parent) and stays inside `area`. */
  constructor(canvas, area) {
    this.canvas = canvas;
    this.area = area;
    this.el = h("div", { class: "popover", hidden: true });
    this.timer = null;
    this.card = null; // the node element it is for
  }

  /** Whether the popover is (or is about to be) for the node element `g`. */
  on(g) {
    return this.card === g;
  }

  start(node, g) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.end();
      this.card = g;
      const mine = () => this.card === g && g.isConnected;
      const body = examplesSlot(node.unit, {
        cls: "examples-img",
        about: "short",
        onShow: () => mine() && this.place(g),
        onHide: () => mine() && this.end(),
      });
      mount(this.el, h("div", { class: "popover-title" }, "Dataset examples · ", h("code", {}, node.unit)), body);
    }, DELAY_MS);
  }

  end() {
    clearTimeout(this.timer);
    this.card = null;
    this.el.hidden = true;
    this.el.replaceChildren();
  }

  place(g) {
    const pop = this.el;
    const area = this.area.getBoundingClientRect();
    const origin = this.canvas.getBoundingClientRect();
    const card = g.querySelector(".card").getBoundingClientRect();
    const margin = 8;
    pop.style.visibility = "hidden"; // measured before it is seen
    pop.hidden = false;
    const img = pop.querySelector(".examples-img img");
    if (img) img.style.maxHeight = "";
    const room = area.height - 2 * margin;
    if (img && pop.offsetHeight > room) img.style.maxHeight = `${Math.max(60, img.offsetHeight - (pop.offsetHeight - room))}px`;
    const w = pop.offsetWidth;
    const hgt = pop.offsetHeight;
    let left = card.right + 10;
    if (left + w > area.right - margin) left = card.left - 10 - w; // no room on the right: the left side
    left = Math.min(Math.max(left, area.left + margin), area.right - margin - w);
    const top = Math.min(Math.max(card.top, area.top + margin), area.bottom - margin - hgt);
    pop.style.left = `${left - origin.left}px`;
    pop.style.top = `${Math.max(area.top + margin, top) - origin.top}px`;
    pop.style.visibility = "";
  }
}

// Pan and zoom of the tree's SVG: drag or wheel to pan, ctrl+wheel or the buttons to zoom,
// fit the whole tree, or bring a node and its children into view.

import { NODE_H, NODE_W } from "./layout.js";

export class PanZoom {
  /** `svg` is panned by transforming `viewport`; `lay()` gives the current layout. */
  constructor(svg, viewport, lay) {
    this.svg = svg;
    this.viewport = viewport;
    this.lay = lay;
    this.view = { tx: 40, ty: 40, z: 1 };
    this.install();
  }

  apply() {
    const { tx, ty, z } = this.view;
    this.viewport.setAttribute("transform", `translate(${tx},${ty}) scale(${z})`);
  }

  /** Whether the whole tree fits the view at zoom `minZoom` or more. */
  fitsAt(minZoom) {
    const rect = this.svg.getBoundingClientRect();
    const b = this.bounds();
    return rect.width > 0 && Math.min(rect.width / b.w, rect.height / b.h) >= minZoom;
  }

  bounds() {
    const pad = 26;
    const lay = this.lay();
    return { x: -pad, y: -pad - 16, w: lay.width + 2 * pad, h: lay.height + 2 * pad + 40 };
  }

  /** Fit the tree in view; `initial`: not below a readable zoom, centred on `selected`. */
  fit(initial = false, selected = null) {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width || !this.lay()) return;
    const b = this.bounds();
    let z = Math.min(rect.width / b.w, rect.height / b.h, 1);
    if (initial) z = Math.max(z, 0.7);
    z = Math.max(0.2, z);
    this.view.z = z;
    this.view.tx = b.w * z <= rect.width ? (rect.width - b.w * z) / 2 - b.x * z : 12 - b.x * z;
    this.view.ty = b.h * z <= rect.height ? (rect.height - b.h * z) / 2 - b.y * z : 12 - b.y * z;
    if (initial && b.w * z > rect.width && selected) {
      this.view.tx = rect.width / 2 - (selected.x + NODE_W / 2) * z;
    }
    this.apply();
  }

  zoomBy(factor, cx, cy) {
    const rect = this.svg.getBoundingClientRect();
    const px = cx ?? rect.width / 2;
    const py = cy ?? rect.height / 2;
    const z = Math.min(2.5, Math.max(0.15, this.view.z * factor));
    const k = z / this.view.z;
    this.view.tx = px - (px - this.view.tx) * k;
    this.view.ty = py - (py - this.view.ty) * k;
    this.view.z = z;
    this.apply();
  }

  /** Bring `node` and its `children` into view (zooming out, not below a readable size). */
  reveal(node, children) {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width) return;
    const group = [node, ...children];
    const b = this.bounds();
    if (b.w * this.view.z > rect.width || b.h * this.view.z > rect.height) {
      // The tree outgrew the view: zoom out, but not below a readable size.
      const z = Math.max(0.7, Math.min(rect.width / b.w, rect.height / b.h, 1));
      if (z < this.view.z) this.zoomBy(z / this.view.z);
    }
    const z = this.view.z;
    const x0 = Math.min(...group.map((n) => n.x)) * z + this.view.tx;
    const x1 = (Math.max(...group.map((n) => n.x)) + NODE_W) * z + this.view.tx;
    const y0 = Math.min(...group.map((n) => n.y)) * z + this.view.ty;
    const y1 = (Math.max(...group.map((n) => n.y)) + NODE_H + 12) * z + this.view.ty;
    let dx = 0;
    let dy = 0;
    if (x1 - x0 < rect.width - 24) {
      if (x1 > rect.width - 12) dx = rect.width - 12 - x1;
      if (x0 + dx < 12) dx = 12 - x0;
    } else {
      dx = rect.width / 2 - (node.x + NODE_W / 2) * z - this.view.tx;
    }
    if (y1 > rect.height - 12) dy = rect.height - 12 - y1;
    if (y0 + dy < 12) dy = 12 - y0;
    this.view.tx += dx;
    this.view.ty += dy;
    this.apply();
  }

  install() {
    const svg = this.svg;
    let drag = null;
    svg.addEventListener("pointerdown", (e) => {
      if (e.target.closest(".node") || e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, tx: this.view.tx, ty: this.view.ty };
      svg.setPointerCapture(e.pointerId);
      svg.classList.add("dragging");
    });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.view.tx = drag.tx + e.clientX - drag.x;
      this.view.ty = drag.ty + e.clientY - drag.y;
      this.apply();
    });
    const end = () => {
      drag = null;
      svg.classList.remove("dragging");
    };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
    svg.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const rect = svg.getBoundingClientRect();
        if (e.ctrlKey || e.metaKey) {
          this.zoomBy(Math.exp(-e.deltaY * 0.0025), e.clientX - rect.left, e.clientY - rect.top);
        } else {
          this.view.tx -= e.shiftKey ? e.deltaY : e.deltaX;
          this.view.ty -= e.shiftKey ? 0 : e.deltaY;
          this.apply();
        }
      },
      { passive: false },
    );
    window.addEventListener("resize", () => this.lay() && this.apply());
  }
}

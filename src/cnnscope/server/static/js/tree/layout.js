// A tidy top-down tree layout: leaves take consecutive columns, parents sit centred over
// their first and last child, and depth gives the row (one row per chain layer).

export const NODE_W = 128;
export const NODE_H = 176;
export const GAP_X = 14;
export const GAP_Y = 80;

/**
 * Place every visible node (sets node.x, node.y, node.depth).
 * @param {object} root
 * @param {(node) => object[]} visibleChildren
 * @returns {{nodes: object[], width: number, height: number, depth: number}}
 */
export function layout(root, visibleChildren) {
  const nodes = [];
  let column = 0;
  let maxDepth = 0;
  const place = (node, depth) => {
    node.depth = depth;
    node.y = depth * (NODE_H + GAP_Y);
    maxDepth = Math.max(maxDepth, depth);
    nodes.push(node);
    const kids = visibleChildren(node);
    if (!kids.length) {
      node.x = column * (NODE_W + GAP_X);
      column += 1;
      return;
    }
    for (const kid of kids) place(kid, depth + 1);
    node.x = (kids[0].x + kids[kids.length - 1].x) / 2;
  };
  place(root, 0);
  return {
    nodes,
    width: Math.max(1, column) * (NODE_W + GAP_X) - GAP_X,
    height: (maxDepth + 1) * NODE_H + maxDepth * GAP_Y,
    depth: maxDepth,
  };
}

/** A smooth edge from a parent's bottom centre to a child's top centre. */
export function edgePath(parent, child) {
  const x1 = parent.x + NODE_W / 2;
  const y1 = parent.y + NODE_H;
  const x2 = child.x + NODE_W / 2;
  const y2 = child.y;
  const my = (y1 + y2) / 2;
  return `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
}

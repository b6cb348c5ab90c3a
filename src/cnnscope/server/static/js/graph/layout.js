// A class graph's layered layout: one row per layer (the class on top), the nodes of a row
// ordered by barycentre sweeps to cut edge crossings, then spread evenly and centred.

export const ROW_H = 92;
export const COL_W = 92;
export const LEFT = 190;
export const RIGHT = 150;
export const TOP = 34;
export const R_MIN = 6;
export const R_MAX = 22;

/** The rows of `data` (a ClassGraph.to_dict()): `data.layers` top first, then any layer a
 *  node names that `layers` lacks; each row's nodes in the order of `data.nodes`. */
export function rows(data) {
  const names = [...data.layers];
  for (const n of data.nodes) if (!names.includes(n.layer)) names.push(n.layer);
  const byLayer = new Map(names.map((name) => [name, []]));
  for (const n of data.nodes) byLayer.get(n.layer).push(n);
  return names.map((name) => ({ layer: name, nodes: byLayer.get(name) }));
}

/** Edge crossings between two adjacent rows, given each node's position in its row. */
function crossings(pairs, pos) {
  let count = 0;
  for (let i = 0; i < pairs.length; i += 1) {
    const [a1, b1] = pairs[i];
    for (let j = i + 1; j < pairs.length; j += 1) {
      const [a2, b2] = pairs[j];
      if ((pos.get(a1) - pos.get(a2)) * (pos.get(b1) - pos.get(b2)) < 0) count += 1;
    }
  }
  return count;
}

/** Place every node of `data`: returns {rows ({layer, y, nodes}), pos (id -> {x, y, row}), width, height,
 *  crossings}. Rows with fewer nodes are centred; the order within a row comes from
 *  alternating down and up barycentre sweeps (edge weights as the means' weights), keeping
 *  the order with the fewest crossings seen. */
export function layout(data, sweeps = 8) {
  const rs = rows(data);
  const rowOf = new Map();
  rs.forEach((r, i) => r.nodes.forEach((n) => rowOf.set(n.id, i)));
  // adjacent-row pairs [upper id, lower id, weight], grouped by the upper row's index
  const between = rs.map(() => []);
  for (const e of data.edges) {
    const a = rowOf.get(e.target);
    const b = rowOf.get(e.source);
    if (a === undefined || b === undefined || b !== a + 1) continue;
    between[a].push([e.target, e.source, Math.abs(e.weight) || 1e-12]);
  }
  const order = rs.map((r) => r.nodes.map((n) => n.id));
  const centred = () => {
    const pos = new Map();
    for (const ids of order) ids.forEach((id, j) => pos.set(id, j - (ids.length - 1) / 2));
    return pos;
  };
  const total = () => {
    const pos = centred();
    return between.reduce((sum, pairs) => sum + crossings(pairs, pos), 0);
  };
  // reorder row r by the weighted mean position of its neighbours in row r + side
  const sweep = (r, side) => {
    const pos = centred();
    const sum = new Map();
    const mass = new Map();
    const pairs = side < 0 ? between[r - 1] : between[r];
    for (const [up, low, w] of pairs) {
      const [mine, other] = side < 0 ? [low, up] : [up, low];
      sum.set(mine, (sum.get(mine) || 0) + w * pos.get(other));
      mass.set(mine, (mass.get(mine) || 0) + w);
    }
    const key = (id) => (mass.get(id) ? sum.get(id) / mass.get(id) : pos.get(id));
    const keys = new Map(order[r].map((id) => [id, key(id)]));
    order[r] = [...order[r]].sort((a, b) => keys.get(a) - keys.get(b) || pos.get(a) - pos.get(b));
  };
  let best = order.map((ids) => [...ids]);
  let fewest = total();
  for (let s = 0; s < sweeps && fewest > 0; s += 1) {
    if (s % 2 === 0) for (let r = 1; r < order.length; r += 1) sweep(r, -1);
    else for (let r = order.length - 2; r >= 0; r -= 1) sweep(r, +1);
    const now = total();
    if (now < fewest) {
      fewest = now;
      best = order.map((ids) => [...ids]);
    }
  }
  const widest = Math.max(1, ...best.map((ids) => ids.length));
  const pos = new Map();
  const rowY = (i) => TOP + R_MAX + i * ROW_H;
  best.forEach((ids, i) => {
    const x0 = LEFT + ((widest - ids.length) * COL_W) / 2 + COL_W / 2;
    ids.forEach((id, j) => pos.set(id, { x: x0 + j * COL_W, y: rowY(i), row: i }));
  });
  const ordered = rs.map((r, i) => ({ layer: r.layer, y: rowY(i), nodes: best[i].map((id) => r.nodes.find((n) => n.id === id)) }));
  return {
    rows: ordered,
    pos,
    width: LEFT + widest * COL_W + RIGHT,
    height: TOP + 2 * R_MAX + Math.max(0, rs.length - 1) * ROW_H + 28,
    crossings: fewest,
  };
}

/** An edge from a lower node (below) up to an upper node, as a smooth vertical S-curve. */
export function edgePath(lower, upper, rLower, rUpper) {
  const y1 = lower.y - rLower;
  const y2 = upper.y + rUpper;
  const my = (y1 + y2) / 2;
  return `M${lower.x},${y1} C${lower.x},${my} ${upper.x},${my} ${upper.x},${y2}`;
}

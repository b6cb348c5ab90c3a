// The tree's numbers in words: a child's share of its parent's evidence, a faithfulness
// measurement, and names shortened to fit a card.

import { splitUnit } from "../api.js";
import { num, pct } from "../dom.js";

/** A child's weight in words: its share of its parent's evidence of the same sign. */
export function shareWords(node) {
  if (node.share === null) return "on the shared path, not among the top k";
  const how = node.sign === "neg" ? "inhibits" : "excites";
  return `${how}: ${pct(node.share, node.share < 0.1 ? 1 : 0)} of the ${node.sign === "neg" ? "inhibitory" : "excitatory"} evidence that reaches`;
}

/** A faithfulness measurement in words: what was zeroed, what was measured, what it did. */
export function faithWords(f) {
  const n = f.children.length;
  const more = f.children.length > 3 ? ", …" : "";
  const layers = [...new Set(f.children.map((c) => splitUnit(c).layer))];
  const names = f.children.slice(0, 3).map((c) => (layers.length === 1 ? `#${splitUnit(c).channel}` : c));
  const of = layers.length === 1 ? ` of ${layers[0]}` : "";
  return `Zeroing its ${n} shown children (${names.join(", ")}${more}${of}) takes ${f.measure} from ${num(f.value)} to ${num(f.zeroed)} (${change(f.drop, 1)}). Zeroing ${n} random channels of the same layer instead takes it to ${num(f.random_zeroed)} on average (${change(f.random_drop, 1)} ± ${pct(f.random_std)}).`;
}

/** The change of an activation when channels are zeroed: drop 0.19 -> "−19%". */
export function change(drop, digits = null) {
  if (!Number.isFinite(drop)) return "–";
  const a = Math.abs(drop);
  return `${drop >= 0 ? "−" : "+"}${pct(a, digits ?? (a < 0.1 ? 1 : 0))}`;
}

/** Shorten at the end: "tabby cat…". */
export function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** Shorten in the middle, keeping both ends readable: "blocks.11.…nd_act". */
export function middleClip(text, n) {
  if (text.length <= n) return text;
  const tail = Math.floor((n - 1) / 2);
  return `${text.slice(0, n - 1 - tail)}…${text.slice(-tail)}`;
}

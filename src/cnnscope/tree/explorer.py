"""The neuron tree of one image: path-conditioned children, reconstructions, ablations.

This is seed cnn_treevis's ``VisTree`` rebuilt on the engine, for any PyTorch CNN.

A *chain* is a list of layers, top first (the logits, the head, stage outputs...). A
*path* is a root unit followed by one channel of each next lower chain layer. The path
defines a gradient, under one backward rule (:mod:`cnnscope.engine.rules`):

- the root is seeded with 1 at its maximum (or given) position, or at its logit. For an
  activation layer (ReLU6...) the seed goes in just below the activation, at the
  pre-activation maximum: a unit saturated at 6 would otherwise pass no gradient;
- the gradient ``G`` is read at the output of the next chain layer, i.e. after the rule
  of every activation above it. Only the node's channel is kept, rescaled by a gain, and
  it goes on down from there, through the node's own activation under the rule.

Children (``scoring="path"``, the default): the channels ``c`` of the next chain layer
ranked by ``w_c = mean over positions of A_c * G_c`` (``A`` that layer's output), the
first-order share of ``c`` in its parent's evidence, read *before* the child's own rule;
for the logit root and the head (no activation between them) it is exact. Reading it
there lets both signs show under every rule: ``sign="pos"`` gives the children whose
``w`` has the rule's polarity (:data:`~cnnscope.engine.rules.POLARITY`: positive for
gradient, guided and deconvnet, negative for guided_neg, which passes only negative
gradients), ``sign="neg"`` those that work against it (inhibitory under guided).

Each non-root node's kept channel is *oriented* to the rule's polarity before it crosses
its own activation: a child whose ``w`` goes against the rule is kept negated, so that
the rule passes it (where a child is the output of an activation that can be negative,
SiLU or hardswish, the sign is read from ``mean(|A_c| * G_c)``, the sign of its
gradient where it is active). Under guided an inhibitory child is then drawn by what
drives it rather than blanked; under guided_neg every node carries negative gradients down, as in
the seed. An edge's displayed sign (:attr:`Node.sign`) is relative to its parent:
``pos`` when the child raises what its parent's seed measures.

``scoring="seed"`` is seed cnn_treevis's exact formula: ``G`` read *after* the child's
own rule (Caffe's inclusive ``backward(start, end)``), ``w_c = |mean(A_c * G_c)|`` with
``sign="abs"``, the gain measured there, and no orientation. Under guided, deconvnet and
guided_neg, ``G`` then has one sign where ``A > 0``, so ``pos`` and ``abs`` agree. It is
not the default because it hides a child's inhibition (guided keeps only the positive
part of ``G_c``: a channel whose evidence is mostly negative still ranks high) and ranks
by a quantity that is not a share of the parent.

A node's reconstruction is the path's gradient at the input; :meth:`Explorer.focus` is
the box of the input where the node carries its evidence (the zoom of its picture).

Cost: one recorded forward per image (the engine caches it), then one backward to
score a node's children and one batched backward for the reconstructions of all of
them. The masked seed of every node is cached, so expanding a node never recomputes
the path above it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..engine import INPUT, LOGITS, Forward, Unit, strengths
from ..engine.rules import DEFAULT_RULE, POLARITY, check_rule
from ..errors import CnnscopeError, UnitSpecError
from ..vocabulary import from_url_form
from .node import Node, edge_shares
from .options import (
    DEFAULT_GAIN,
    DEFAULT_K,
    DEFAULT_SCORING,
    DEFAULT_SIGN,
    GAINS,
    SCORINGS,
    SIGNS,
)
from .paths import TreePath
from .pictures import focus_box, render_gradient, zoom_picture
from .seeds import PathSeeds, seed_key

log = logging.getLogger(__name__)

#: Floats per chunk of seeds in :meth:`Explorer.parents` (bounds its memory).
_PARENT_CHUNK_FLOATS = 1 << 24


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise CnnscopeError(f"unknown {what} {value!r}: choose one of {', '.join(allowed)}")
    return value


def _check_options(
    rule: str, gain: str | None = None, scoring: str | None = None, sign: str | None = None
) -> None:
    """Raise ``CnnscopeError`` for a rule, or a gain, scoring or sign given, not in its list."""
    check_rule(rule)
    for value, allowed, what in (
        (scoring, SCORINGS, "scoring"),
        (gain, GAINS, "gain"),
        (sign, SIGNS, "sign"),
    ):
        if value is not None:
            _choice(value, allowed, what)


class Explorer(PathSeeds):
    """Path-conditioned neuron trees of a model on single images.

    Parameters
    ----------
    model : LoadedModel
        The model (see :func:`cnnscope.models.load_model`).
    chain : list of str, optional
        Layers of the tree, top first; ``model.default_chain`` by default. The model's
        logits layer is called ``logits``. Names are validated and put in execution order.
    cache_bytes : int
        Memory bound of the cached node seeds per image.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> from cnnscope.tree import parse_path
    >>> ex = Explorer(load_model())
    >>> x = ex.input(load_gallery_image("chelsea"))
    >>> root = parse_path("logits:285")
    >>> [n.unit.layer for n in ex.children(x, root, k=2)]
    ['head_act', 'head_act']
    """

    def children(
        self,
        x: torch.Tensor,
        path: TreePath | str,
        k: int = DEFAULT_K,
        rule: str = DEFAULT_RULE,
        scoring: str = DEFAULT_SCORING,
        gain: str = DEFAULT_GAIN,
        sign: str = DEFAULT_SIGN,
    ) -> list[Node]:
        """The top-``k`` children of the last node of ``path`` in the next chain layer.

        Parameters
        ----------
        x : torch.Tensor
            The image (1 x 3 x H x W).
        path : TreePath or str
            Root first.
        k : int
            How many children.
        rule : str
            Backward rule of every ReLU on the way, one of
            :data:`~cnnscope.engine.rules.RULES`; its polarity orients the children.
        scoring : {"path", "local", "seed"}
            ``path``: the gradient conditioned on the whole path, read before the
            children's own rule (see the module docs); ``local``: the node seeded alone at
            its maximum; ``seed``: cnn_treevis's exact formula (read after the children's
            rule; use it with ``sign="abs"``).
        gain : {"auto", "fixed", "none"}
            Rescaling of each kept channel: the whole layer's L1 mass, the layer's
            channel count, or 1. It changes the weights' scale, never their order, their
            shares or the pictures (each is scaled on its own).
        sign : {"pos", "neg", "abs"}
            ``pos``: the children whose ``mean(A_c G_c)`` has the rule's polarity (the
            largest positive ones, or under guided_neg the most negative: what the rule
            passes); ``neg``: those against it (inhibitory children under guided);
            ``abs``: the largest ``|mean(A_c G_c)|`` of either sign (cnn_treevis's formula).

        Returns
        -------
        list of Node
            Best first; empty at the bottom of the chain, or when no channel of the next
            layer has a contribution of the asked sign.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> kids = ex.children(x, "logits:285", k=3)
        >>> len(kids), kids[0].path[0], kids[0].sign
        (3, Unit(layer='logits', channel=285, pos=None), 'pos')
        >>> ex.children(x, "logits:285", k=1, rule="guided_neg")[0].sign  # it lowers the logit
        'neg'
        """
        _check_options(rule, gain, scoring, sign)
        if int(k) < 1:
            raise CnnscopeError(f"k must be at least 1, not {k}")
        path = self.check_path(path)
        lower = self.below(path[-1].layer)
        if lower is None:
            log.info("%s", self._bottom_line(path))
            return []
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, gain, scoring)
        grad = fwd.grad(at, seed, to=lower, rule=rule)
        grad = self._reading(fwd, lower, grad, rule, scoring)
        contrib = self._contributions(fwd, lower, grad)
        along = contrib * POLARITY[rule]
        if sign == "abs":
            order = torch.argsort(contrib.abs(), descending=True, stable=True)
        elif sign == "pos":
            order = torch.argsort(along, descending=True, stable=True)
            order = order[along[order] > 0]
        else:
            order = torch.argsort(along, stable=True)
            order = order[along[order] < 0]
        if not len(order):
            log.info("%s", self._empty_line(fwd, path, lower, along, rule, sign))
        edge = torch.where(contrib < 0, -1.0, 1.0).double() * self._orientation(fwd, path, seed)
        shares = edge_shares(contrib, edge)
        nodes = []
        for c in order[: int(k)].tolist():
            child = path + (Unit(lower, c),)
            w = float(contrib[c])
            if scoring != "local":  # the child's seed, for its own children and picture
                entered = self._child_seed(fwd, lower, grad, w, c, (rule, gain, scoring))
                self._put(fwd, seed_key(child, rule, gain, scoring), entered)
            edge_sign = "pos" if edge[c] > 0 else "neg"
            nodes.append(Node(Unit(lower, c), w, child, edge_sign, float(shares[c])))
        return nodes

    def no_children(self, x: torch.Tensor, path: TreePath | str, **options) -> str | None:
        """Why :meth:`children` of ``path`` with ``options`` is empty (one line), or None.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.no_children(x, "logits:285") is None
        True
        """
        path = self.check_path(path)
        if self.children(x, path, k=1, **options):
            return None
        lower = self.below(path[-1].layer)
        if lower is None:
            return self._bottom_line(path)
        rule, scoring = options.get("rule", DEFAULT_RULE), options.get("scoring", DEFAULT_SCORING)
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, options.get("gain", DEFAULT_GAIN), scoring)
        grad = self._reading(fwd, lower, fwd.grad(at, seed, to=lower, rule=rule), rule, scoring)
        along = self._contributions(fwd, lower, grad) * POLARITY[rule]
        return self._empty_line(fwd, path, lower, along, rule, options.get("sign", DEFAULT_SIGN))

    @staticmethod
    def _bottom_line(path: TreePath) -> str:
        return f"{path[-1]} is in the bottom layer of the chain: it has no children"

    def _empty_line(
        self, fwd: Forward, path: TreePath, lower: str, along: torch.Tensor, rule: str, sign: str
    ) -> str:
        """The one-line reason for no children of ``sign`` in ``lower`` (``along``: the
        contributions times the rule's polarity)."""
        node = path[-1]
        kind = "excitatory" if sign == "pos" else "inhibitory"
        other = int((along < 0).sum() if sign == "pos" else (along > 0).sum())
        n = along.numel()
        spread = f"all {n}" if other == n else f"{other} of {n} (the rest are 0)"
        line = (
            f"no unit of {lower} carries {kind} evidence for {node} under {rule}: "
            f"{spread} contributions go the other way"
        )
        if other:
            line += f" (try the {'inhibiting' if sign == 'pos' else 'exciting'} sign)"
        fc = self._modules.get(self.model.logits_layer or "")
        bias = getattr(fc, "bias", None)
        if len(path) == 1 and node.layer == LOGITS and isinstance(bias, torch.Tensor):
            value = float(fwd.activation(LOGITS).reshape(-1)[node.channel])
            b = float(bias.detach().reshape(-1)[node.channel])
            line += f"; the logit {value:+.3g} has a bias of {b:+.3g}"
        return line

    def input_gradients(
        self,
        x: torch.Tensor,
        paths: Sequence[TreePath | str],
        rule: str = DEFAULT_RULE,
        gain: str = DEFAULT_GAIN,
        scoring: str = DEFAULT_SCORING,
    ) -> torch.Tensor:
        """The input gradients (n x 3 x H x W) of ``paths``: one batched backward per seed layer.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.input_gradients(x, ["logits:285", "logits:281"]).shape
        torch.Size([2, 3, 224, 224])
        """
        _check_options(rule, gain, scoring)
        checked = [self.check_path(p) for p in paths]
        if not checked:
            return torch.zeros(0, 3, *self.input_size)
        fwd = self.forward(x)
        seeds = [self.node_seed(fwd, p, rule, gain, scoring) for p in checked]
        out: list[torch.Tensor | None] = [None] * len(seeds)
        groups: dict[str, list[int]] = {}
        for i, (at, _) in enumerate(seeds):
            groups.setdefault(at, []).append(i)
        for at, idx in groups.items():
            stacked = torch.stack([seeds[i][1] for i in idx])
            grads = fwd.grad(at, stacked, to=INPUT, rule=rule, batched=True)
            for j, i in enumerate(idx):
                out[i] = grads[j, 0]
        return torch.stack([g for g in out if g is not None]).detach().cpu()

    def reconstructions(
        self,
        x: torch.Tensor,
        paths: Sequence[TreePath | str],
        rule: str = DEFAULT_RULE,
        gain: str = DEFAULT_GAIN,
        scoring: str = DEFAULT_SCORING,
        zoom: bool = False,
    ) -> list[np.ndarray]:
        """Reconstructions (H x W x 3 uint8) of ``paths``, batched.

        Each is the path's gradient at the input, each map scaled by its own percentile
        (see :func:`cnnscope.render.gradient_image`), so deep paths neither saturate nor
        vanish. With ``zoom``, each is cropped to its node's :meth:`focus` and scaled back.
        """
        grads = self.input_gradients(x, paths, rule, gain, scoring)
        pictures = [render_gradient(g) for g in grads]
        if not zoom:
            return pictures
        return [
            zoom_picture(pic, self.focus(x, p, rule, gain, scoring))
            for pic, p in zip(pictures, paths)
        ]

    def reconstruction(
        self,
        x: torch.Tensor,
        path: TreePath | str,
        rule: str = DEFAULT_RULE,
        gain: str = DEFAULT_GAIN,
        scoring: str = DEFAULT_SCORING,
    ) -> np.ndarray:
        """The reconstruction (H x W x 3 uint8) of one path.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> ex.reconstruction(ex.input(load_gallery_image("chelsea")), "logits:285").shape
        (224, 224, 3)
        """
        return self.reconstructions(x, [path], rule, gain, scoring)[0]

    def focus(
        self,
        x: torch.Tensor,
        path: TreePath | str,
        rule: str = DEFAULT_RULE,
        gain: str = DEFAULT_GAIN,
        scoring: str = DEFAULT_SCORING,
    ) -> tuple[int, int, int, int] | None:
        """The box of the input where the last node of ``path`` carries its evidence.

        The node's evidence map is ``A_c * |S_c|`` at its layer (``S`` its seed: the
        gradient its path brings, or for a root its seeded position; ``A`` its
        pre-activation above zero, which keeps a ReLU6 unit's peak where it saturates).
        The box covers the 3 x 3 cells around the map's peak, at least :data:`MIN_FOCUS`
        pixels wide. It is the zoom of the node's picture: below the logit the gradient
        reaches most of the image, while the node's evidence peaks in a few cells.
        ``None`` for a unit without positions (a logit) or without evidence.

        Returns
        -------
        tuple of int or None
            ``(top, left, bottom, right)`` in input pixels (bottom and right excluded).

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.focus(x, "logits:285") is None
        True
        >>> ex.focus(x, "blocks.15.expand_act:3@0,2")  # one 32-pixel cell, padded by one
        (0, 32, 96, 128)
        """
        _check_options(rule, gain, scoring)
        path = self.check_path(path)
        node = path[-1]
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, gain, scoring)
        act = fwd.activation(at)[0, node.channel]
        if act.dim() != 2 or seed.dim() != 4:
            return None
        act = act.clamp(min=0) if at != node.layer else act.abs()
        evidence = (act * seed[0, node.channel].abs()).double()
        if float(evidence.max()) <= 0:
            return None
        peak = divmod(int(evidence.reshape(-1).argmax()), evidence.shape[1])
        return focus_box(peak, (evidence.shape[0], evidence.shape[1]), self.input_size)

    def faithfulness(
        self,
        x: torch.Tensor,
        path: TreePath | str,
        children: Sequence[Unit | str],
        draws: int = 8,
        seed: int = 0,
        rule: str = DEFAULT_RULE,
        scoring: str = DEFAULT_SCORING,
    ) -> dict:
        """How much zeroing ``children`` lowers the last node of ``path``, vs random channels.

        ``children`` (channels of the next chain layer) are set to zero at their layer;
        in ``draws`` other rows of the same batched forward, as many random other
        channels of that layer are. Two readings of the node are compared:

        - ``max``: its activation at its position (root) or spatial maximum, or its
          logit (for an activation layer, the pre-activation there);
        - ``path``: the quantity its children were scored for: the sum of its
          activation (pre-activation) times its path-conditioned seed. For a root, or
          with ``scoring="local"``, it is the ``max`` reading.

        Returns
        -------
        dict
            For the reading that matches ``scoring``: ``value``, its value ``a``;
            ``zeroed``, its value with the children zeroed; ``random_zeroed``, its mean
            value over the random draws; ``drop``, the relative drop
            ``(a - a_zeroed) / |a|`` (above 1 when the value changes sign);
            ``random_drop`` and ``random_std``, the mean and standard deviation of the
            drop over the random draws. Also ``target`` (``path`` or ``max``),
            ``measure`` (what was measured, in words), ``max`` (the same numbers for the
            ``max`` reading), ``draws`` and ``layer``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> kids = [n.unit for n in ex.children(x, "logits:285", k=5)]
        >>> f = ex.faithfulness(x, "logits:285", kids)
        >>> f["drop"] > f["random_drop"] + 3 * f["random_std"]
        True
        """
        _check_options(rule, scoring=scoring)
        path = self.check_path(path)
        parent = path[-1]
        lower = self.below(parent.layer)
        if lower is None:
            raise UnitSpecError(f"{parent} is at the bottom of the chain: it has no children")
        units = [Unit.parse(from_url_form(u)) if isinstance(u, str) else u for u in children]
        if not units:
            raise UnitSpecError("faithfulness needs at least one child")
        chans = []
        for u in units:
            if self.canonical(u.layer) != lower:
                raise UnitSpecError(f"child {u} is not in {lower}, the layer below {parent}")
            if not 0 <= u.channel < self._shape[lower][0]:
                raise UnitSpecError(f"channel {u.channel} out of range for {lower}")
            chans.append(u.channel)
        chans = sorted(set(chans))
        draws = max(1, min(int(draws), 256))
        fwd = self.forward(x)
        n_chan = self._shape[lower][0]
        others = np.setdiff1d(np.arange(n_chan), chans)
        pool = others if len(others) >= len(chans) else np.arange(n_chan)
        rng = np.random.default_rng(seed)
        mask = torch.ones(draws + 2, n_chan)
        mask[1, chans] = 0.0
        for d in range(draws):
            mask[d + 2, rng.choice(pool, len(chans), replace=False)] = 0.0

        def zero(t: torch.Tensor) -> torch.Tensor:
            return t * mask.to(t).view(mask.shape[0], n_chan, *([1] * (t.dim() - 2)))

        batch = fwd.input.detach().repeat(draws + 2, *([1] * (fwd.input.dim() - 1)))
        at, root = self._root_seed(fwd, parent)
        out = self.engine.intervene(batch, {lower: zero}, read=[at])[at].double().cpu()
        rows = out.shape[0]
        at_max = (out * root.double().cpu()).reshape(rows, -1).sum(1)
        result: dict = {"max": _drops(at_max), "draws": draws, "layer": lower}
        if scoring != "local" and len(path) > 1:
            _, own = self.node_seed(fwd, path, rule, "none", scoring)
            along = (out * own.double().cpu()).reshape(rows, -1).sum(1)
            what = "pre-activation" if at != parent.layer else "activation"
            measure = (
                f"{parent}'s {what} summed over its map, weighted by the gradient its path "
                "brings (what its children were scored on)"
            )
            result.update(_drops(along), target="path", measure=measure)
        else:
            result.update(result["max"], target="max", measure=self._max_words(fwd, parent))
        return result

    def _max_words(self, fwd: Forward, unit: Unit) -> str:
        """What the ``max`` reading of ``unit`` is, in words."""
        if unit.layer == LOGITS:
            return f"the logit of class {unit.channel} ({self.model.label(unit.channel)})"
        at, seed = self._root_seed(fwd, unit)
        what = "pre-activation" if at != unit.layer else "activation"
        if seed.dim() != 4:
            return f"{unit}'s {what}"
        y, x = divmod(int(seed[0, unit.channel].reshape(-1).argmax()), seed.shape[3])
        where = "at" if unit.pos is not None else "at its peak,"
        return f"{Unit(unit.layer, unit.channel)}'s {what} {where} position ({y}, {x})"

    def parents(
        self, x: torch.Tensor, unit: Unit | str, k: int = 5, rule: str = DEFAULT_RULE
    ) -> list[Node]:
        """Drill up: the units of the chain layer above that ``unit`` feeds most.

        Each channel ``p`` of the layer above is seeded alone at its maximum (its logit);
        ``unit``'s weight for it is ``mean(A_u * G_u)``, as it would be as ``p``'s child
        under local scoring. The top ``k`` by magnitude are returned; each node's path is
        ``(parent, unit)``. All seeds go through batched backwards in memory-bounded chunks.
        Parents with a zero weight are left out: a unit can feed nothing above it on an
        image (for instance when its depthwise channel is silent there), and then the list
        is empty.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.parents(x, "head_act:0", k=1)[0].unit.layer
        'logits'
        """
        check_rule(rule)
        if isinstance(unit, str):
            unit = Unit.parse(from_url_form(unit))
        (unit,) = self.check_path((unit,))
        upper = self.above(unit.layer)
        if upper is None:
            return []
        fwd = self.forward(x)
        act_u = fwd.activation(unit.layer)[0, unit.channel].reshape(1, -1)
        at = self.grad_layer(fwd, upper)
        pre = fwd.activation(at)
        n_par = pre.shape[1]
        per = max(1, _PARENT_CHUNK_FLOATS // max(pre.numel(), fwd.activation(unit.layer).numel()))
        weights = torch.zeros(n_par, dtype=torch.float64)
        flat = pre[0].reshape(n_par, -1)
        best = strengths(fwd, upper)[1][0]
        for start in range(0, n_par, per):
            idx = torch.arange(start, min(n_par, start + per))
            seeds = torch.zeros(len(idx), n_par, flat.shape[1], dtype=pre.dtype, device=pre.device)
            seeds[torch.arange(len(idx)), idx, best[idx]] = 1.0
            seeds = seeds.view(len(idx), *pre.shape)
            grads = fwd.grad(at, seeds, to=unit.layer, rule=rule, batched=True)
            g = grads[:, 0, unit.channel].reshape(len(idx), -1)
            weights[idx] = (g * act_u).mean(1).double().cpu()
        order = torch.argsort(weights.abs(), descending=True, stable=True)[: max(1, int(k))]
        order = order[weights[order] != 0]  # a unit whose path up is silent feeds nobody
        child = Unit(unit.layer, unit.channel)
        shares = edge_shares(weights, torch.where(weights < 0, -1.0, 1.0).double())
        nodes = []
        for p in order.tolist():
            w = float(weights[p])
            parent = Unit(upper, p)
            sign = "pos" if w >= 0 else "neg"
            nodes.append(Node(parent, w, (parent, child), sign, float(shares[p])))
        return nodes


def _drops(values: torch.Tensor) -> dict:
    """Relative drops of rows 1.. (children, then random draws) against row 0 (clean)."""
    clean = float(values[0])
    scale = abs(clean) if abs(clean) > 1e-12 else 1.0
    drops = (clean - values[1:]) / scale
    rand = drops[1:]
    return {
        "drop": float(drops[0]),
        "random_drop": float(rand.mean()),
        "random_std": float(rand.std(unbiased=False)),
        "value": clean,
        "zeroed": float(values[1]),
        "random_zeroed": float(values[2:].mean()),
    }

"""The neuron tree of an image: children, parents, faithfulness and reconstructions.

Used by :mod:`cnnscope.server.routers.tree`. Answers are the tree's own
:class:`~cnnscope.tree.Node` objects (the router turns each into a ``NodeOut``); every
argument is a checked reference (:mod:`cnnscope.server.refs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...engine import Unit
from ...engine.rules import DEFAULT_RULE
from ...render.pictures import crop_to_support, zoom_png
from ...tree import Node, format_path
from ...tree.options import DEFAULT_GAIN, DEFAULT_K, DEFAULT_SCORING, DEFAULT_SIGN
from ..compute import Compute, Replica
from ..refs import ImageRef, TreePathRef, UnitRef
from ..store import BadRequestError

__all__ = ["Children", "TreeService"]


@dataclass(frozen=True)
class Children:
    """A node's children, and why there are none when there are none."""

    nodes: list[Node]
    reason: str | None = None


class TreeService:
    """Tree answers for one model; see :class:`~cnnscope.server.compute.Compute`.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> from cnnscope.server.service import ExplorerService
    >>> from cnnscope.server.store import ImageStore
    >>> svc = ExplorerService(load_model(), ImageStore(tempfile.mkdtemp()))  # doctest: +SKIP
    >>> chelsea, root = svc.refs.image("chelsea"), svc.refs.path("logits:285")  # doctest: +SKIP
    >>> len(asyncio.run(svc.tree.children(chelsea, root)).nodes)  # doctest: +SKIP
    5
    """

    def __init__(self, compute: Compute):
        self.compute = compute

    async def children(
        self,
        image: ImageRef,
        path: TreePathRef,
        *,
        k: int = DEFAULT_K,
        rule: str = DEFAULT_RULE,
        scoring: str = DEFAULT_SCORING,
        gain: str = DEFAULT_GAIN,
        sign: str = DEFAULT_SIGN,
        prefetch: bool = True,
    ) -> Children:
        """The top ``k`` children of the last unit of ``path`` in the next chain layer.

        With ``prefetch`` their reconstructions are queued at once (one batched backward),
        so the images the page asks for next are already on their way. Without children,
        :meth:`cnnscope.tree.Explorer.no_children` says why.
        """
        core = self.compute
        how = {"rule": rule, "scoring": scoring, "gain": gain, "sign": sign}

        def compute(lane: Replica) -> list[Node]:
            return lane.explorer.children(core.input(image.id), path.units, k=k, **how)

        key = ("children", image.id, path.text, k, rule, scoring, gain, sign)
        nodes = await core.call(key, compute)
        if not nodes:

            def why(lane: Replica) -> str | None:
                return lane.explorer.no_children(core.input(image.id), path.units, **how)

            reason = await core.call(("no_children", image.id, path.text, *how.values()), why)
            return Children([], reason)
        if prefetch:
            drawn = "seed" if scoring == "seed" else "path"
            core.prefetch(image.id, [format_path(n.path) for n in nodes], rule, gain, drawn)
        return Children(list(nodes))

    async def parents(
        self, image: ImageRef, unit: UnitRef, *, k: int = DEFAULT_K, rule: str = DEFAULT_RULE
    ) -> list[Node]:
        """The units of the chain layer above ``unit`` that it feeds most (drill up).

        One backward per unit of the layer above (seconds): on the slow lane.
        """
        core = self.compute

        def compute(lane: Replica) -> list[Node]:
            return lane.explorer.parents(core.input(image.id), unit.unit, k=k, rule=rule)

        nodes = await core.call(("parents", image.id, str(unit), k, rule), compute, slow=True)
        if nodes:  # each parent is shown as a root of its own
            core.prefetch(image.id, [format_path(n.path[:1]) for n in nodes], rule, DEFAULT_GAIN)
        return nodes

    async def faithfulness(self, image: ImageRef, path: TreePathRef, **options) -> dict:
        """How much the node drops when its shown children are zeroed, against random ones.

        ``options`` are those of :meth:`children` (which children are shown).
        """
        core = self.compute
        shown = await self.children(image, path, **options, prefetch=False)
        if not shown.nodes:
            raise BadRequestError(shown.reason or f"{path.last} has no children")
        kids: list[Unit] = [n.unit for n in shown.nodes]
        rule, scoring = options.get("rule", DEFAULT_RULE), options.get("scoring", DEFAULT_SCORING)

        def compute(lane: Replica) -> dict:
            x = core.input(image.id)
            result = lane.explorer.faithfulness(x, path.units, kids, rule=rule, scoring=scoring)
            keys = ("drop", "random_drop", "random_std", "value", "zeroed", "random_zeroed")
            return {**{k: float(result[k]) for k in keys}, "measure": result["measure"]}

        key = ("faith", image.id, path.text, *sorted(options.items()))
        result = await core.call(key, compute, slow=True)  # a batched forward of 9 rows
        return {**result, "children": [str(u) for u in kids]}

    async def reconstruction(
        self,
        image: ImageRef,
        path: TreePathRef,
        rule: str = DEFAULT_RULE,
        gain: str = DEFAULT_GAIN,
        crop: str = "none",
        scoring: str = DEFAULT_SCORING,
    ) -> bytes:
        """The path-conditioned reconstruction of ``path`` as PNG (batched with its peers).

        ``crop="support"`` zooms on the part of the image the gradient reaches (for units of
        low layers, whose receptive field is a few pixels of a 224-pixel picture);
        ``crop="focus"`` on the cells where the node carries its evidence.
        """
        core = self.compute
        scoring = "seed" if scoring == "seed" else "path"  # local nodes are drawn on their path
        png = await core.reconstruction(image.id, path.text, rule, gain, scoring)
        if crop == "none":
            return png
        key = ("crop", crop, image.id, path.text, rule, gain, scoring)
        if crop == "support":
            return await core.in_side_pool(key, crop_to_support, png)
        box = await core.call(
            ("focus", image.id, path.text, rule, gain, scoring),
            lambda lane: lane.explorer.focus(core.input(image.id), path.units, rule, gain, scoring),
        )
        return await core.in_side_pool(key, zoom_png, png, box)

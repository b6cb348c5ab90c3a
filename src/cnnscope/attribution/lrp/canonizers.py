"""LRP canonizers: rewrite a private copy of a model into an equivalent one LRP explains well.

Fused BatchNorm + activation modules are split, BatchNorms folded into the convolution that
feeds them, and multiplicative gates (squeeze-excitation) found on the autograd graph.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...engine import Engine
from ...engine.recorder import first_tensor
from .rules import _BNS, _bn_affine, _is_linear, _Linear

_GATES = (nn.Sigmoid, nn.Hardsigmoid)


def _is_gate_type(m: nn.Module) -> bool:
    return isinstance(m, _GATES) or "sigmoid" in type(m).__name__.lower()


def _consumer_kinds(root) -> dict[int, list[str]]:
    """For each autograd node reachable from ``root``, the class names of the nodes reading it."""
    kinds: dict[int, list[str]] = defaultdict(list)
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is not None:
                kinds[id(nxt)].append(type(node).__name__)
                stack.append(nxt)
    return kinds


def find_gates(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the sigmoid-like modules whose output only multiplies other tensors (gates).

    Found on the autograd graph of one forward of ``x``: a sigmoid that is the model's
    output, or feeds anything but a product, is no gate.

    Examples
    --------
    >>> class SE(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc, self.gate = nn.Conv2d(3, 3, 1), nn.Sigmoid()
    ...     def forward(self, x):
    ...         return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))
    >>> find_gates(SE(), torch.randn(1, 3, 4, 4))
    ['gate']
    """
    outputs: dict[str, list] = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: outputs[n].append(o.grad_fn))
        for n, m in model.named_modules()
        if n and _is_gate_type(m)
    ]
    try:
        with torch.enable_grad():
            out = first_tensor(model(x.detach().clone().requires_grad_(True)))
    finally:
        for h in handles:
            h.remove()
    if out is None or out.grad_fn is None:
        return []
    kinds = _consumer_kinds(out.grad_fn)
    readers = lambda nodes: [k for g in nodes if g is not None for k in kinds.get(id(g), [])]  # noqa: E731
    return [
        n
        for n, nodes in outputs.items()
        if readers(nodes) and all(k.startswith("MulBackward") for k in readers(nodes))
    ]


def unfuse_batchnorm_acts(model: nn.Module) -> list[str]:
    """Split fused BatchNorm + activation modules (timm's ``BatchNormAct2d``) in place.

    A fused module is a BatchNorm subclass with an ``act`` or ``drop`` submodule; it becomes
    ``nn.Sequential(plain BatchNorm, drop, act)``, the same function, so that the BatchNorm
    can be folded and the activation gets its own rule.

    Examples
    --------
    >>> class BNAct(nn.BatchNorm2d):
    ...     def __init__(self, c):
    ...         super().__init__(c)
    ...         self.act = nn.ReLU()
    ...     def forward(self, x):
    ...         return self.act(super().forward(x))
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4)).eval()
    >>> unfuse_batchnorm_acts(net), type(net[1][0]).__name__
    (['1'], 'BatchNorm2d')
    """
    fused = [
        (n, m)
        for n, m in model.named_modules()
        if n
        and isinstance(m, nn.modules.batchnorm._BatchNorm)
        and type(m) not in _BNS
        and any(isinstance(getattr(m, a, None), nn.Module) for a in ("act", "drop"))
    ]
    for _, bn in fused:
        base = next(c for c in _BNS if isinstance(bn, c))
        plain = base(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        plain.load_state_dict({k: v for k, v in bn.state_dict().items() if "." not in k})
        parts: list[nn.Module] = [plain.eval()]
        for attr in ("drop", "act"):
            sub = getattr(bn, attr, None)
            if isinstance(sub, nn.Module):
                if getattr(sub, "inplace", False):
                    # a private copy: the BN output must stay recorded (torch's stubs type
                    # module attributes they do not know as Tensor | Module)
                    sub.inplace = False  # type: ignore[assignment]
                parts.append(sub)
        _replace_all(model, bn, nn.Sequential(*parts))
    return [n for n, _ in fused]


# ---------------------------------------------------------------------------------------
# Canonizer


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, last, new)


def _replace_all(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Replace every registration of module ``old`` (a module may sit at several paths)."""
    paths = [n for n, m in root.named_modules(remove_duplicate=False) if m is old and n]
    for path in paths:
        _set_module(root, path, new)


def _consumers(root) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        for nxt, _ in node.next_functions:
            if nxt is not None:
                counts[id(nxt)] += 1
                stack.append(nxt)
    return counts


def fold_batchnorms(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """Fold each BatchNorm into the conv / linear layer that feeds it, in place.

    The pairs are found on the autograd graph of one recorded forward of ``x``: a BN is
    folded when its input is the output of a convolution (or linear layer) that nothing
    else reads, and both run once. The BN becomes an ``nn.Identity`` (its name still
    records the same values). Use it on a copy: :func:`build_lrp_model` does.

    Returns
    -------
    list of (str, str)
        The ``(conv, batchnorm)`` names folded.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> with torch.no_grad():
    ...     _ = net[1].running_mean.fill_(0.5)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> before = net(x)
    >>> fold_batchnorms(net, x)
    [('0', '1')]
    >>> torch.allclose(before, net(x), atol=1e-5)
    True
    """
    fwd = Engine(model).forward(x, cache=False)
    try:
        return _fold(model, fwd)
    finally:
        del fwd


def _fold(model: nn.Module, fwd) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    names = fwd.layers
    calls: defaultdict[str, int] = defaultdict(int)
    for n in names:
        calls[n.partition("#")[0]] += 1
    by_node: dict[int, str] = {}
    for n in names:
        t = fwd.tensor(n)
        if t.grad_fn is not None and calls[n.partition("#")[0]] == 1:
            by_node.setdefault(id(t.grad_fn), n)
    consumers = _consumers(fwd.output.grad_fn)
    pairs: list[tuple[str, str]] = []
    folds: list[tuple[_Linear, _BatchNorm]] = []
    for n in names:
        bn = modules.get(n)
        if not isinstance(bn, _BNS) or calls[n] != 1 or bn.running_mean is None:
            continue
        node = fwd.tensor(n).grad_fn
        if node is None or "BatchNorm" not in type(node).__name__:
            continue
        parent = node.next_functions[0][0]
        conv_name = by_node.get(id(parent)) if parent is not None else None
        conv = modules.get(conv_name) if conv_name else None
        if conv_name is None or conv is None or not _is_linear(conv):
            continue
        if consumers.get(id(parent), 0) != 1:
            continue
        pairs.append((conv_name, n))
        folds.append((conv, bn))
    with torch.no_grad():
        for conv, bn in folds:
            scale, shift = _bn_affine(bn)
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.mul_(scale.view(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            new_bias = bias * scale + shift
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias, requires_grad=False)
            else:
                conv.bias.copy_(new_bias)
            _replace_all(model, bn, nn.Identity())
    return pairs

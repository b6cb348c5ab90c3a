"""Step rules with state kept per key (one state per tile, as cnn-vis keeps one per region).

All three *descend* the gradient ``g`` and update the parameter in place:

* ``rmsprop`` (exactly cnn-vis): ``cache = d * cache + (1 - d) * g^2``;
  ``x -= lr * g / sqrt(cache + 1e-8)`` (the epsilon is inside the square root).
* ``adam``: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
  ``x -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` (as ``torch.optim.Adam``).
* ``sgd``: ``b = momentum * b + g`` (``b = g`` at the first step), ``x -= lr * b``
  (as ``torch.optim.SGD`` without dampening).

``lr`` may be a tensor broadcastable to the parameter (per-pixel learning rates).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from ..errors import CnnscopeError

__all__ = ["OPTIMIZERS", "Optimizer"]

OPTIMIZERS = ("rmsprop", "adam", "sgd")


class Optimizer:
    """One of :data:`OPTIMIZERS`, with a separate state for each key.

    Parameters
    ----------
    kind : {"rmsprop", "adam", "sgd"}
        The step rule.
    decay_rate : float
        RMSProp decay ``d`` (cnn-vis ``--decay_rate``).
    betas : (float, float)
        Adam's moment decays.
    eps : float
        Adam's epsilon (RMSProp uses cnn-vis's fixed ``1e-8`` inside the root).
    momentum : float
        SGD momentum.

    Examples
    --------
    >>> opt = Optimizer("rmsprop", decay_rate=0.5)
    >>> x = torch.zeros(2)
    >>> step = opt.step("tile", x, torch.tensor([1.0, -2.0]), lr=1.0)
    >>> [round(v, 4) for v in x.tolist()], torch.equal(step, x)
    ([-1.4142, 1.4142], True)
    """

    def __init__(
        self,
        kind: str = "rmsprop",
        *,
        decay_rate: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
    ):
        if kind not in OPTIMIZERS:
            raise CnnscopeError(
                f"unknown optimizer {kind!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if not 0.0 <= decay_rate < 1.0:
            raise CnnscopeError(f"decay rate must be in [0, 1), got {decay_rate}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise CnnscopeError(f"Adam betas must be in [0, 1), got {betas}")
        if momentum < 0:
            raise CnnscopeError(f"momentum must be >= 0, got {momentum}")
        self.kind = kind
        self.decay_rate = float(decay_rate)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.state: dict[Hashable, dict] = {}

    def reset(self) -> None:
        """Forget every key's state (cnn-vis does this at each new size)."""
        self.state.clear()

    @torch.no_grad()
    def step(self, key: Hashable, param: torch.Tensor, grad: torch.Tensor, lr) -> torch.Tensor:
        """Descend ``grad`` on ``param`` (in place) with the state of ``key``; returns the step."""
        st = self.state.setdefault(key, {"t": 0})
        st["t"] += 1
        if self.kind == "rmsprop":
            cache = st.get("cache")
            if cache is None:
                cache = st["cache"] = torch.zeros_like(grad)
            cache.mul_(self.decay_rate).add_((1.0 - self.decay_rate) * grad * grad)
            update = -grad / torch.sqrt(cache + 1e-8)
        elif self.kind == "adam":
            b1, b2 = self.betas
            if "m" not in st:
                st["m"], st["v"] = torch.zeros_like(grad), torch.zeros_like(grad)
            st["m"].mul_(b1).add_(grad, alpha=1.0 - b1)
            st["v"].mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            m_hat = st["m"] / (1.0 - b1 ** st["t"])
            v_hat = st["v"] / (1.0 - b2 ** st["t"])
            update = -m_hat / (v_hat.sqrt() + self.eps)
        else:
            if self.momentum:
                buf = st.get("buf")
                if buf is None:
                    buf = st["buf"] = grad.clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                update = -buf
            else:
                update = -grad
        step = update * lr
        param.add_(step)
        return step

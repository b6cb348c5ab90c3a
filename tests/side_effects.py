"""Snapshots of a model and tensors, to prove that a call left them exactly as they were."""

from __future__ import annotations

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def snapshot(module: nn.Module, *tensors: torch.Tensor) -> dict:
    """Everything a call could disturb: values, flags, grads, hooks, training modes."""
    return {
        "params": {
            name: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
            for name, p in module.named_parameters()
        },
        "buffers": {name: b.detach().clone() for name, b in module.named_buffers()},
        "training": {name: m.training for name, m in module.named_modules()},
        "hooks": {
            name: tuple(len(getattr(m, d, {}) or {}) for d in _HOOK_DICTS)
            for name, m in module.named_modules()
        },
        "global_hooks": (
            len(nn.modules.module._global_forward_hooks),
            len(nn.modules.module._global_backward_hooks),
        ),
        "tensors": [
            (t.detach().clone(), t.requires_grad, t.grad is None, t._version) for t in tensors
        ],
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    """Fail with the first difference between two snapshots."""
    assert before["training"] == after["training"], "training flags changed"
    assert before["hooks"] == after["hooks"], "hooks changed"
    assert before["global_hooks"] == after["global_hooks"], "global hooks changed"
    assert before["grad_enabled"] == after["grad_enabled"], "grad mode changed"
    for name, (value, flag, grad) in before["params"].items():
        v2, f2, g2 = after["params"][name]
        assert flag == f2, f"requires_grad of {name} changed"
        assert torch.equal(value, v2), f"parameter {name} changed"
        assert (grad is None) == (g2 is None), f"grad of {name} changed"
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), f"buffer {name} changed"
    for (t1, r1, g1, v1), (t2, r2, g2, v2) in zip(before["tensors"], after["tensors"]):
        assert torch.equal(t1, t2) and r1 == r2 and g1 == g2, "an input tensor changed"
        assert v1 == v2, "an input tensor was modified in place"

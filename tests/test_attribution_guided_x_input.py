"""Seed 2's "Guided-Grad x Image": guided backprop times the input, against a hand backward."""

from __future__ import annotations

import torch

from cnnscope.attribution import attribute, get_method

from .mixed_net import INPUT_SIZE, MixedNet, reference_grad


def test_guided_x_input_is_the_hand_written_guided_gradient_times_the_input():
    net = MixedNet().eval()
    torch.manual_seed(3)
    x = torch.rand(2, 3, *INPUT_SIZE)
    seed = torch.zeros(2, 5)
    seed[:, 2] = 1.0
    expected = reference_grad(net, x, seed, "guided")["input"] * x.double()
    got = attribute(net, x, "guided_x_input", target=2).tensor
    assert expected.abs().max() > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    assert get_method("Guided-Grad x Image").name == "guided_x_input"  # the seed's name
    # a noise tunnel can wrap it: with no noise, one sample is the method itself
    tunnel = attribute(
        net, x, "smoothgrad", target=2, base="guided_x_input", samples=1, noise_level=0
    )
    torch.testing.assert_close(tunnel.tensor, got, rtol=1e-5, atol=1e-7)

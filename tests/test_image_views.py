"""Image transforms and view specs on real UCM images (augment/image_views.py)."""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import duchkit.augment.image_views as iv
from duchkit.augment.image_views import (ImageAugParams, ImageDecodeError, ViewSpec, apply_spec,
                                         build_setup, decode_rgb, draw_view)


@pytest.fixture(scope="module")
def ucm_images(shared_data):
    """A few real images, including the smallest UCM image (242 px wide)."""
    root = shared_data / "ucm" / "images"
    names = ["airplane/airplane10.jpg", "beach/beach03.jpg", "freeway/freeway50.jpg",
             "buildings/buildings96.jpg"]
    return {n: decode_rgb((root / n).read_bytes(), n, 200) for n in names}


def _view(setup, image, seed=0, view=1):
    return draw_view(setup, np.random.default_rng(seed), image, view)


@pytest.mark.parametrize("angles", [(-10, -5), (-10, 10), (-20, 20)])
@pytest.mark.parametrize("name", ["AugmentedCenterCrop", "AugmentedRandomCrop"])
def test_rotation_then_crop_shows_no_empty_border(ucm_images, angles, name):
    setup = build_setup(name, ImageAugParams(rotation_degrees=angles))
    for image in ucm_images.values():
        lifted = np.maximum(image.pixels, 1)  # real pixels are >= 1; the rotation fills with 0
        for seed in range(12):
            spec = _view(setup, image, seed)
            out = apply_spec(lifted, spec)
            assert out.shape == (200, 200, 3)
            assert out.min() >= 1, f"black border in {spec.to_json()}"


def test_border_check_can_fail_and_zoom_is_needed_at_20_degrees(ucm_images):
    """Without the zoom, +20 degrees on the 242 px image shows the empty corners in the crop;
    256 px images need no zoom at the paper's best range."""
    small = ucm_images["buildings/buildings96.jpg"]
    assert min(small.pixels.shape[:2]) < 256
    lifted = np.maximum(small.pixels, 1)
    raw = apply_spec(lifted, ViewSpec("x", 1, small.size, [
        {"op": "rotate", "angle": 20.0, "zoom": 1.0},
        {"op": "crop", "x": (small.size[0] - 200) // 2, "y": (small.size[1] - 200) // 2,
         "size": 200}]))
    assert raw.min() == 0
    spec = _view(build_setup("AugmentedCenterCrop", ImageAugParams(rotation_degrees=(20, 20))),
                 small)
    assert spec.ops[1]["zoom"] > 1.0
    big = ucm_images["airplane/airplane10.jpg"]
    spec = _view(build_setup("AugmentedCenterCrop"), big)
    assert spec.ops[1]["zoom"] == 1.0 and -10 <= spec.ops[1]["angle"] <= -5


def test_jitter_strength_zero_is_identity(ucm_images):
    image = ucm_images["beach/beach03.jpg"]
    op = iv.ColorJitter(0.0).draw(np.random.default_rng(3), None)[0]
    assert (op["brightness"], op["contrast"], op["saturation"], op["hue"]) == (1, 1, 1, 0)
    assert np.array_equal(iv.APPLY["color_jitter"](image.pixels, op), image.pixels)
    strong = iv.ColorJitter(0.5).draw(np.random.default_rng(3), None)[0]
    assert 0.6 <= strong["brightness"] <= 1.4 and -0.1 <= strong["hue"] <= 0.1
    assert not np.array_equal(iv.APPLY["color_jitter"](image.pixels, strong), image.pixels)


def test_blur_sigma_range_is_respected_and_applied(ucm_images):
    blur = iv.GaussianBlur((1.1, 1.3))
    rng = np.random.default_rng(0)
    sigmas = [blur.draw(rng, None)[0]["sigma"] for _ in range(300)]
    assert 1.1 <= min(sigmas) < 1.12 and 1.28 < max(sigmas) <= 1.3
    image = ucm_images["freeway/freeway50.jpg"].pixels
    op = {"op": "gaussian_blur", "sigma": 1.2, "kernel": 3}
    expected = cv2.GaussianBlur(image, (3, 3), sigmaX=1.2, sigmaY=1.2)
    diff = np.abs(iv.APPLY["gaussian_blur"](image, op).astype(int) - expected.astype(int))
    assert diff.max() <= 1


def test_same_seed_same_view_and_spec_round_trip(ucm_images):
    image = ucm_images["airplane/airplane10.jpg"]
    for name in iv.SETUPS:
        setup = build_setup(name)
        a, b = _view(setup, image, seed=7), _view(setup, image, seed=7)
        assert a.to_json() == b.to_json()
        pixels = apply_spec(image.pixels, a)
        again = apply_spec(image.pixels, ViewSpec.from_json(a.to_json()))
        assert np.array_equal(pixels, again)
    setup = build_setup("AugmentedCenterCrop")
    assert _view(setup, image, seed=1).to_json() != _view(setup, image, seed=2).to_json()


def test_setups_are_the_papers_compositions(ucm_images):
    image = ucm_images["airplane/airplane10.jpg"]
    ops = lambda name, seed: [o["op"] for o in _view(build_setup(name), image, seed).ops]  # noqa
    centre = {"op": "crop", "x": 28, "y": 28, "size": 200}
    assert _view(build_setup("CenterCrop"), image).ops == [centre]  # view 0
    # the paper's NoAugmentation pairs view 0 with a different view: the uncropped image
    assert _view(build_setup("NoAugmentation"), image).ops == []
    spec = _view(build_setup("AugmentedCenterCrop"), image)
    assert [o["op"] for o in spec.ops] == ["gaussian_blur", "rotate", "crop"]
    assert spec.ops[-1] == centre
    crops = {(s.ops[-1]["x"], s.ops[-1]["y"]) for s in
             (_view(build_setup("AugmentedRandomCrop"), image, k) for k in range(20))}
    assert ops("AugmentedRandomCrop", 0) == ["gaussian_blur", "rotate", "crop"]
    assert len(crops) > 10 and all(0 <= x <= 56 and 0 <= y <= 56 for x, y in crops)
    chosen = [ops("RandomAugmentation", k) for k in range(60)]
    assert all(len(c) == 2 and c[1] == "crop" for c in chosen)
    assert {c[0] for c in chosen} == {"rotate", "color_jitter", "gaussian_blur"}


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="setup must be one of"):
        build_setup("Mosaic")
    with pytest.raises(ValueError, match="blur_sigma"):
        ImageAugParams(blur_sigma=(1.3, 1.1))
    with pytest.raises(ValueError, match="rotation_degrees"):
        ImageAugParams(rotation_degrees=(-90, 0))
    with pytest.raises(ValueError, match="jitter_strength"):
        ImageAugParams(jitter_strength=-1)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_converts_modes_upscales_small_and_names_corrupt_files(shared_data):
    gray = decode_rgb(_png(np.full((220, 230), 90, np.uint8)), "g.png", 200)
    assert gray.mode == "L" and gray.pixels.shape == (220, 230, 3) and not gray.upscaled
    rgba = np.zeros((210, 210, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    out = decode_rgb(_png(rgba, "RGBA"), "a.png", 200)
    assert out.mode == "RGBA" and out.pixels.shape == (210, 210, 3) and out.pixels[0, 0, 0] == 200
    deep = np.full((210, 210), 65535 // 2, np.uint16)
    im16 = decode_rgb(_png(deep), "d.png", 200)
    assert im16.mode.startswith("I") and abs(int(im16.pixels[0, 0, 0]) - 127) <= 1
    tiny = decode_rgb(_png(np.full((64, 80, 3), 50, np.uint8)), "t.png", 200)
    assert tiny.upscaled and min(tiny.pixels.shape[:2]) == 200 and tiny.size == (80, 64)
    data = (shared_data / "ucm" / "images" / "beach" / "beach03.jpg").read_bytes()
    with pytest.raises(ImageDecodeError, match="beach03.jpg"):
        decode_rgb(data[: len(data) // 2], "beach03.jpg")
    with pytest.raises(ImageDecodeError, match="junk.png"):
        decode_rgb(b"not an image", "junk.png")


def test_the_pixel_ops_make_no_network_call():
    """albumentations asks PyPI for updates on import unless told not to; duchkit's image ops
    (and the workers that import them) tell it, so an offline pipeline makes no network call."""
    import subprocess
    import sys

    code = ("import urllib.request\n"
            "def refuse(*a, **k): raise SystemExit('network call: ' + repr(a[1:2]))\n"
            "urllib.request.OpenerDirector.open = refuse\n"
            "import duchkit.augment.image_ops as ops\n"
            "ops._transforms()\n"
            "import os; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1" and "fetching version" not in out.stderr

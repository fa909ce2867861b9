"""The `noisy` corruption against the authors' own pipeline: torchvision's transforms applied one
image at a time to the same [-1, 1] images.

Deterministic pieces (given their parameters) must agree to float precision. Random steps draw
from different generators than torchvision, so they are compared by statistics a user would
notice, each within 4 standard errors of the difference (sampling error of both sides, treated
as independent, which overstates it since both sides see the same images): with other seeds a
faithful implementation fails one such check with probability under 1e-4, while the old
implementation misses the full-pipeline ones by some 30 standard errors.
"""

import math
from contextlib import contextmanager

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from ml.data import (
    NOISY_STEPS, _affine, _blur, _perspective, _sharpen, add_gaussian_noise, authors_transforms, corrupt,
    load_images, random_adjust_sharpness, random_affine, random_erasing, random_perspective, select_classes,
    to_model_input,
)

N = 1000  # images per statistic: torchvision runs per image, ~1.5 ms each for the whole Compose


@contextmanager
def one_thread():
    """For torchvision on one small image at a time: intra-op threads only add overhead there,
    50-fold on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torchvision_per_image(x, transforms, seed=0):
    with one_thread(), torch.random.fork_rng():
        torch.manual_seed(seed)
        compose = T.Compose(transforms)
        return torch.stack([compose(image) for image in x])


def ours(x, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for step in steps:
        x = step(x, generator)
    return x


def assert_same_mean(a, b, what):
    """Per-image samples a, b (or 0/1 indicators, for fractions): means within 4 standard errors."""
    a, b = a.double(), b.double()
    se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    assert abs(a.mean().item() - b.mean().item()) < 4 * se + 1e-6, (what, a.mean().item(), b.mean().item(), se)


@pytest.fixture(scope="module")
def images(mnist32):
    x = mnist32.x_val[:N]
    # A mapped MNIST pixel is exactly 0 only where the antialiased resize lands on 127.5/255 (4
    # pixels in 2000 images at 32x32), so after a step nearly every exactly-0 pixel is a fill.
    assert (x == 0).float().mean() < 1e-4
    return x


@pytest.fixture(scope="module")
def images64(data_dir):
    """The first N validation images at the paper's 64x64, without resizing the training split."""
    images, _ = select_classes(*load_images("mnist", data_dir, train=False), [0, 1])
    return to_model_input(images[:N], 64)


def test_corrupt_is_the_authors_steps_then_the_noise(images):
    assert [step.__name__ for step in NOISY_STEPS] == [
        "random_horizontal_flip", "random_vertical_flip", "random_affine", "random_perspective",
        "random_erasing", "gaussian_blur", "random_adjust_sharpness",
    ]
    x = images[:64]
    generator = torch.Generator().manual_seed(3)
    expected = x
    for step in NOISY_STEPS:
        expected = step(expected, generator)
    expected = add_gaussian_noise(expected, generator)
    assert torch.equal(corrupt(x, torch.Generator().manual_seed(3)), expected)
    assert not torch.allclose(corrupt(x, torch.Generator().manual_seed(4)), expected)


def test_blur_matches_torchvision(images):
    x = images[:64]
    sigma = 0.1 + 1.9 * torch.rand(len(x), generator=torch.Generator().manual_seed(0))
    with one_thread():
        expected = torch.stack([TF.gaussian_blur(image, [5, 5], [s, s]) for image, s in zip(x, sigma.tolist())])
    # Same kernel, same reflect padding; only the convolution's summation order may differ (a few ulp).
    torch.testing.assert_close(_blur(x, sigma), expected, atol=1e-6, rtol=0)


def test_sharpness_matches_torchvision_and_lifts_the_background(images):
    x = images[:64]
    with one_thread():
        expected = torch.stack([TF.adjust_sharpness(image, 2.0) for image in x])
    torch.testing.assert_close(_sharpen(x), expected, atol=1e-6, rtol=0)
    # The authors' bug: the [0, 1] clamp turns the -1 background, border included, into 0.
    assert _sharpen(x).min() == 0.0 and (x[..., 0, :] == -1).all()
    assert (_sharpen(x)[..., 0, :] == 0).all()
    applied = random_adjust_sharpness(x, torch.Generator().manual_seed(0)).flatten(1).min(1).values >= 0
    assert 0 < applied.sum() < len(x)


def test_affine_matches_torchvision_given_the_parameters(images):
    x = images[:64]
    g = torch.Generator().manual_seed(0)
    angle = 60 * torch.rand(len(x), generator=g) - 30
    translate = torch.randint(-3, 4, (len(x), 2), generator=g).float()
    scale = 0.9 + 0.2 * torch.rand(len(x), generator=g)
    shear = 20 * torch.rand(len(x), generator=g) - 10
    with one_thread():
        expected = torch.stack([
            TF.affine(image, a, [int(tx), int(ty)], s, [sh, 0.0], fill=[0.0])
            for image, a, (tx, ty), s, sh in zip(x, angle.tolist(), translate.tolist(), scale.tolist(), shear.tolist())
        ])
    got = _affine(x, angle, translate, scale, shear)
    # Nearest sampling: a last-ulp difference in the grid could flip a pixel on a rounding tie,
    # so allow one pixel in a thousand (none differ with this torch).
    assert (got != expected).float().mean() <= 1e-3
    torch.testing.assert_close(got.mean((1, 2, 3)), expected.mean((1, 2, 3)), atol=0.01, rtol=0)


def test_perspective_matches_torchvision_given_the_corners(images):
    x = images[:64]
    size, reach = x.shape[-1], x.shape[-1] // 4
    low = torch.tensor([[0, 0], [size - reach - 1, 0], [size - reach - 1, size - reach - 1], [0, size - reach - 1]])
    ends = low + torch.randint(0, reach + 1, (len(x), 4, 2), generator=torch.Generator().manual_seed(0))
    corners = [[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]]
    with one_thread():
        expected = torch.stack([TF.perspective(image, corners, e.tolist(), fill=[0.0]) for image, e in zip(x, ends)])
    # The homography comes from a float64 solve instead of torchvision's float64 least squares;
    # both round to the same float32 coefficients but for the odd last bit.
    torch.testing.assert_close(_perspective(x, ends), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["affine", "perspective"])
def test_geometric_steps_match_torchvision_statistics(images, name):
    index = {"affine": 2, "perspective": 3}[name]
    expected = torchvision_per_image(images, [authors_transforms()[index]])
    got = ours(images, [NOISY_STEPS[index]])
    fill = lambda y: (y == 0).flatten(1).float().mean(1)  # noqa: E731
    assert_same_mean(fill(got), fill(expected), f"{name}: fraction of fill pixels")
    assert_same_mean(got.mean((1, 2, 3)), expected.mean((1, 2, 3)), f"{name}: mean pixel value")
    if name == "perspective":  # p = 0.5; the affine map moves every image
        moved = lambda y: (y != images).flatten(1).any(1).float()  # noqa: E731
        assert_same_mean(moved(got), moved(expected), "perspective: fraction of images changed")
    # Fills are 0, mid-grey in [-1, 1]: the old code's -1 fill left no exact zeros behind.
    assert fill(got).mean() > 0.05


def test_erasing_matches_torchvision_statistics(mnist32):
    x = mnist32.x_val[:2000]  # erasing is cheap in torchvision too
    expected = torchvision_per_image(x, [authors_transforms()[4]])
    got = ours(x, [random_erasing])
    for y in (got, expected):
        assert ((y != x) <= (y == 0)).all()  # an erased pixel is set to exactly 0
    erased_got = (got != x).flatten(1).float().mean(1)
    erased_expected = (expected != x).flatten(1).float().mean(1)
    # p = 0.5 and no attempt is ever rejected with these scale and ratio ranges.
    assert_same_mean((erased_got > 0).float(), (erased_expected > 0).float(), "fraction of images erased")
    assert abs((erased_got > 0).float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / len(x))
    # E[area] = 0.11 of the image, plus the integer rounding of h and w.
    assert_same_mean(erased_got[erased_got > 0], erased_expected[erased_expected > 0], "mean erased area")


@pytest.mark.parametrize("size", [32, 64])
def test_full_pipeline_matches_torchvision(images, images64, size):
    x = images if size == 32 else images64
    expected, got = torchvision_per_image(x, authors_transforms()), ours(x, NOISY_STEPS)
    assert_same_mean(got.mean((1, 2, 3)), expected.mean((1, 2, 3)), "mean pixel value")
    # The sharpness clamp lifts the background to 0 in the half of the images it is applied to,
    # and nothing else raises an image's minimum to 0. Old code: mean -0.71, no image lifted.
    lifted_got = (got.flatten(1).min(1).values >= 0).float()
    lifted_expected = (expected.flatten(1).min(1).values >= 0).float()
    assert_same_mean(lifted_got, lifted_expected, "fraction of lifted backgrounds")
    for lifted in (lifted_got, lifted_expected):
        assert abs(lifted.mean().item() - 0.5) < 4 * math.sqrt(0.25 / len(lifted))
    assert got.mean() > -0.4  # the old code kept it at -0.71 (32) and -0.74 (64); torchvision ~-0.21


def test_steps_keep_shape_dtype_and_device(images):
    x = images[:8]
    for step in NOISY_STEPS:
        y = step(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    for step in (random_affine, random_perspective):
        assert not torch.equal(step(x, torch.Generator().manual_seed(0)), step(x, torch.Generator().manual_seed(1)))

"""Every figure renders as a real, non-blank PNG for the models it applies to, and refuses the others.

Tiny models (width 0.125, 32x32, one epoch, 2000 MNIST 0/1 images) are trained once per module.
"""

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ml.config import DatasetConfig, RunConfig, TrainingConfig
from ml.data import Dataset
from ml.figures import (
    FIGURES,
    FigureNotApplicable,
    _hyperplane_points,
    feature_maps,
    latent_classifiers,
    latent_tsne,
    render,
    training_curves,
)
from ml.models import build_model
from ml.train import TrainResult, train

SIZE, WIDTH = 32, 0.125
CNN_FIGURES = {"training-curves", "confusion-matrix", "kernels", "feature-maps"}
VAE_FIGURES = {"training-curves", "confusion-matrix", "latent-tsne", "latent-classifiers", "reconstructions"}
# A convolutional VAE has both kinds: kernels and feature maps of its encoder, and a latent space.
APPLICABLE = {"vgg": CNN_FIGURES, "vae-svm": VAE_FIGURES, "vae-kmeans": VAE_FIGURES,
              "conv-vae-svm": CNN_FIGURES | VAE_FIGURES, "conv-vae-kmeans": CNN_FIGURES | VAE_FIGURES}
# Matplotlib's first two cycle colours, which _scatter_by_label gives the first two sorted labels.
C0, C1 = (31, 119, 180), (255, 127, 14)


def _config(model: str) -> RunConfig:
    return RunConfig(model, DatasetConfig(image_size=SIZE), TrainingConfig(epochs=1, batch_size=128, width=WIDTH, head_epochs=3))


@pytest.fixture(scope="module")
def data(mnist32: Dataset) -> Dataset:
    full = mnist32
    return replace(full, x_train=full.x_train[:2000], y_train=full.y_train[:2000], x_val=full.x_val[:600], y_val=full.y_val[:600])


@pytest.fixture(scope="module")
def trained(data: Dataset) -> dict[str, TrainResult]:
    # One intra-op thread: on a busy two-core machine, OpenMP threads spin-waiting for each
    # other made VGG's one epoch take 20-45 s instead of 2.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: train(_config(name), data, device="cpu") for name in APPLICABLE}
    finally:
        torch.set_num_threads(threads)


def _pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _assert_plausible(png: bytes) -> None:
    pixels = _pixels(png)
    assert min(pixels.shape[:2]) >= 200
    assert pixels.std() > 10, "the image is nearly uniform"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "too few colours for a plot"


def _count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(pixels.astype(int) - colour).max(axis=-1) <= 2).sum())


@pytest.mark.parametrize("model_name", sorted(APPLICABLE))
@pytest.mark.parametrize("figure", FIGURES)
def test_render_draws_applicable_figures_and_refuses_the_rest(
    trained: dict[str, TrainResult], data: Dataset, model_name: str, figure: str
) -> None:
    result = trained[model_name]
    if figure in APPLICABLE[model_name]:
        _assert_plausible(render(figure, result.model, data, result.history))
    else:
        with pytest.raises(FigureNotApplicable):
            render(figure, result.model, data, result.history)


@pytest.mark.parametrize("model_name", ["resnet", "unet"])
@pytest.mark.parametrize("figure", ["kernels", "feature-maps"])
def test_conv_figures_cover_residual_and_unet_encoders(data: Dataset, model_name: str, figure: str) -> None:
    model = build_model(_config(model_name)).eval()
    _assert_plausible(render(figure, model, data, history=[]))


def test_feature_maps_leave_no_hook_behind(trained: dict[str, TrainResult], data: Dataset) -> None:
    model = trained["vgg"].model
    feature_maps(model, data.x_val[-1:])
    assert not any(m._forward_hooks for m in model.modules())


def test_unknown_figure_is_a_plain_value_error(trained: dict[str, TrainResult], data: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown figure") as caught:
        render("histogram", trained["vgg"].model, data, [])
    assert not isinstance(caught.value, FigureNotApplicable)


def test_training_curves_need_a_history() -> None:
    with pytest.raises(FigureNotApplicable):
        training_curves([])


def test_training_curves_of_a_run_cancelled_before_any_accuracy() -> None:
    history = [{"epoch": e, "phase": "vae", "loss": 100.0 / e, "grad_norm": 5.0, "recon_loss": 90.0 / e,
                "kl_loss": 2.0, "val_loss": 110.0 / e} for e in (1, 2)]
    _assert_plausible(training_curves(history))


@pytest.mark.parametrize("b", [-0.7, 1e3], ids=["separating", "all-on-one-side"])
def test_hyperplane_points_lie_on_the_hyperplane(b: float) -> None:
    z = np.random.default_rng(1).normal(size=(50, 6))
    w = np.arange(1.0, 7.0)
    points = _hyperplane_points(z, w, b, n=40)
    assert points.shape == (40, 6)
    np.testing.assert_allclose(points @ w + b, 0.0, atol=1e-9)


def test_hyperplane_points_between_the_sides_stay_within_the_data() -> None:
    z = np.random.default_rng(2).normal(size=(80, 3))
    points = _hyperplane_points(z, np.array([1.0, 0.0, 0.0]), 0.2)
    assert (points.min(axis=0) >= z.min(axis=0)).all() and (points.max(axis=0) <= z.max(axis=0)).all()


def test_a_zero_svm_weight_defines_no_hyperplane() -> None:
    with pytest.raises(ValueError, match="zero"):
        _hyperplane_points(np.ones((5, 2)), np.zeros(2), 0.0)


def test_latent_classifiers_show_whichever_classifier_exists() -> None:
    z = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    labels = (z[:, 0] > 0).long()
    w, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), 0.0
    kmeans_only = _pixels(latent_classifiers(z, labels, assigned=labels))
    both = _pixels(latent_classifiers(z, labels, assigned=labels, svm_w=w, svm_b=b))
    assert both.shape[1] > kmeans_only.shape[1]  # two panels side by side
    _assert_plausible(latent_classifiers(z, labels, svm_w=w, svm_b=b))
    with pytest.raises(ValueError, match="nothing to show"):
        latent_classifiers(z, labels)
    with pytest.raises(ValueError, match="both"):
        latent_classifiers(z, labels, svm_w=w)


def test_latent_tsne_colours_follow_the_labels() -> None:
    """With 180 points of one label and 20 of the other, the big class's colour covers more pixels."""
    z = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    labels = np.array([0] * 180 + [1] * 20)
    mostly_zeros = _pixels(latent_tsne(z, labels))
    mostly_ones = _pixels(latent_tsne(z, 1 - labels))
    assert _count(mostly_zeros, C0) > 2 * _count(mostly_zeros, C1) > 0
    assert _count(mostly_ones, C1) > 2 * _count(mostly_ones, C0) > 0

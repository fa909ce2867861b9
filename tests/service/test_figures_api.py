"""The paper's figures through HTTP: every figure a model kind has is a real PNG, every other one a 409,
GET figures are cached beside the model's artifacts, and feature maps of an uploaded digit work."""

from __future__ import annotations

import io

import numpy as np
import pytest
from api_helpers import assert_error
from PIL import Image

APPLICABLE = {
    "vgg": ("training-curves", "kernels", "feature-maps"),
    "vae-svm": ("training-curves", "latent-tsne", "latent-classifiers", "reconstructions"),
    "vae-kmeans": ("training-curves", "latent-classifiers", "reconstructions"),
}
NOT_APPLICABLE = {
    "vgg": ("latent-tsne", "latent-classifiers", "reconstructions"),
    "vae-svm": ("kernels", "feature-maps"),
    "vae-kmeans": ("kernels", "feature-maps"),
}


def figure_url(model_id: str, name: str) -> str:
    return f"/v1/models/{model_id}/figures/{name}.png"


def assert_real_png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    width, height = image.size
    assert width >= 200 and height >= 200
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10, "the figure is almost uniform"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 16, "the figure has almost no colours"
    return image


@pytest.mark.parametrize(("model", "name"), [(m, n) for m, names in APPLICABLE.items() for n in names])
def test_every_applicable_figure_is_a_png_and_is_cached(client, analysis_models, artifacts, model, name):
    model_id = analysis_models[model]
    response = client.get(figure_url(model_id, name))
    assert_real_png(response)
    assert response.headers["x-cache"] == "miss"
    cached = "feature-maps-0.png" if name == "feature-maps" else f"{name}.png"
    assert (artifacts / model_id / "figures" / cached).read_bytes() == response.content
    again = client.get(figure_url(model_id, name))
    assert again.headers["x-cache"] == "hit" and again.content == response.content


@pytest.mark.parametrize(("model", "name"), [(m, n) for m, names in NOT_APPLICABLE.items() for n in names])
def test_every_figure_of_the_wrong_kind_is_409(client, analysis_models, model, name):
    response = client.get(figure_url(analysis_models[model], name))
    assert_error(response, 409, "figure_not_applicable", "CNN" if model == "vgg" else "convolution")


def test_unknown_figure_is_404_listing_the_figures(client, analysis_models):
    response = client.get(figure_url(analysis_models["vgg"], "loss-landscape"))
    assert_error(response, 404, "figure_not_found", "loss-landscape", "training-curves", "reconstructions")
    assert_error(client.get(figure_url("0123456789abcdef0123456789abcdef", "kernels")), 404, "model_not_found")


def test_feature_maps_of_another_validation_image(client, analysis_models, artifacts):
    model_id = analysis_models["vgg"]
    first = client.get(figure_url(model_id, "feature-maps"))
    fifth = client.get(figure_url(model_id, "feature-maps"), params={"index": 5})
    assert_real_png(fifth)
    assert fifth.content != first.content
    assert (artifacts / model_id / "figures" / "feature-maps-5.png").is_file()
    too_far = client.get(figure_url(model_id, "feature-maps"), params={"index": 10**6})
    assert_error(too_far, 422, "invalid_request", "index")


def test_feature_maps_of_an_uploaded_digit(client, analysis_models, mnist_pngs):
    path, _ = mnist_pngs[0]
    url = figure_url(analysis_models["vgg"], "feature-maps")
    response = client.post(url, files={"file": (path.name, path.read_bytes(), "image/png")})
    assert_real_png(response)
    assert response.content != client.get(url).content
    assert_error(client.post(figure_url(analysis_models["vae-svm"], "feature-maps"),
                             files={"file": (path.name, path.read_bytes(), "image/png")}),
                 409, "figure_not_applicable")


def test_feature_maps_of_a_file_that_is_no_image_is_refused(client, analysis_models):
    url = figure_url(analysis_models["vgg"], "feature-maps")
    text = b"these are not the pixels you are looking for\n"
    assert_error(client.post(url, files={"file": ("notes.txt", text, "text/plain")}), 415, "unsupported_media_type")
    as_bytes = client.post(url, files={"file": ("notes.png", text, "application/octet-stream")})
    assert_error(as_bytes, 400, "invalid_image")
    assert_error(client.post(url, files={"other": ("notes.png", text, "image/png")}), 422, "invalid_request", "file")
    assert_error(client.post(url, json={"pixels": [[[0.0]]]}), 415, "unsupported_media_type")

"""ONNX export (ml/onnx_export.py): for every architecture, onnxruntime's outputs equal PyTorch's within
1e-4, at two batch sizes through one exported graph (the batch dimension is dynamic).

Models are untrained (width 0.0625, 32x32) but not trivial: their batch norms hold the statistics of a
calibration pass, as after training (at initialisation the deep nets' activations die out and every
image gets the same output, which would check little), and K-means centres are fitted on the very
images classified, so more than one cluster and label occur. Each goes through ml.artifacts' save and load, as the service
loads it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ml import artifacts
from ml.artifacts import LoadedModel
from ml.config import MODEL_NAMES, DatasetConfig, RunConfig, TrainingConfig
from ml.models import VAESVM, VAEKMeans, build_model, predict, vae_of
from ml.onnx_export import PartNotApplicable, export
from ml.train import TrainResult, fit_kmeans

SIZE, WIDTH, TOLERANCE = 32, 0.0625, 1e-4
BATCHES = (3, 5)
VAES = [m for m in MODEL_NAMES if "vae" in m]


def loaded_model(name: str, tmp_path, classes=(0, 1), n_clusters=None) -> tuple[LoadedModel, list[torch.Tensor]]:
    """A saved and reloaded model, and the batches it is checked on."""
    torch.manual_seed(0)
    cfg = RunConfig(name, DatasetConfig(image_size=SIZE, classes=list(classes)),
                    TrainingConfig(width=WIDTH, n_clusters=n_clusters),
                    init_from="resnet" if name == "unet-pretrained" else None)
    model = build_model(cfg).eval()
    batches = [torch.rand(n, 1, SIZE, SIZE) * 2 - 1 for n in BATCHES]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.train().momentum = None  # None: the plain average over the calibration pass
    with torch.no_grad():
        (vae_of(model) if isinstance(model, (VAESVM, VAEKMeans)) else model)(torch.rand(32, 1, SIZE, SIZE) * 2 - 1)
    for norm in norms:
        norm.eval()
    if isinstance(model, VAEKMeans):
        x = torch.cat(batches)
        with torch.no_grad():
            z = vae_of(model).encode(x)[0]
        fit_kmeans(model, z, torch.arange(len(x)) % len(classes), seed=0)
    directory = artifacts.save(TrainResult(model), cfg, tmp_path / name)
    return artifacts.load(directory), batches


def session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine's cores are shared
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: torch.Tensor) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x.numpy()})))


def max_difference(got: np.ndarray, expected: torch.Tensor) -> float:
    assert got.shape == tuple(expected.shape)
    return float(np.abs(got.astype(np.float64) - expected.double().numpy()).max())


def check_classifier(loaded: LoadedModel, batches: list[torch.Tensor]) -> float:
    model = loaded.model
    sess = session(export(loaded))
    assert [i.shape[0] for i in sess.get_inputs()] == ["batch"]  # symbolic, not the traced size
    worst, labels = 0.0, []
    for x in batches:
        got, expected = run(sess, x), predict(model, x)
        with torch.no_grad():
            if isinstance(model, VAESVM):
                expected["scores"] = model.scores(x)
            elif not isinstance(model, VAEKMeans):
                expected["logits"] = model(x)
        assert set(got) == set(expected)
        for name, value in expected.items():
            if value.dtype == torch.long:
                assert got[name].tolist() == value.tolist(), name
            else:
                worst = max(worst, max_difference(got[name], value))
        labels += got["class_index"].tolist()
        if not isinstance(model, VAEKMeans):
            assert np.ptp(got["probabilities"][:, 0]) > 1e-4, "every image got the same output: a weak check"
    if isinstance(model, VAEKMeans):
        assert len(set(labels)) > 1, "K-means should predict more than one label here"
    assert worst <= TOLERANCE
    return worst


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_classifier_equals_pytorch(name, tmp_path):
    loaded, batches = loaded_model(name, tmp_path)
    print(f"{name} classifier: max |onnx - torch| = {check_classifier(loaded, batches):.3g}")


@pytest.mark.parametrize(("name", "classes", "n_clusters"), [("conv-vae-svm", (3, 5, 7), None),
                                                             ("vae-kmeans", (2, 4, 8), 5)])
def test_more_classes_and_clusters(name, classes, n_clusters, tmp_path):
    """Three classes: no margin output; more clusters than classes: the cluster -> label map is not a permutation."""
    loaded, batches = loaded_model(name, tmp_path, classes, n_clusters)
    check_classifier(loaded, batches)


@pytest.mark.parametrize("name", VAES)
def test_encoder_and_decoder_equal_pytorch(name, tmp_path):
    loaded, batches = loaded_model(name, tmp_path)
    vae = vae_of(loaded.model)
    encoder, decoder = session(export(loaded, "encoder")), session(export(loaded, "decoder"))
    worst = {"encoder": 0.0, "decoder": 0.0}
    for x in batches:
        with torch.no_grad():
            mean, logvar = vae.encode(x)
            image = vae.decode(mean)
        got = run(encoder, x)
        worst["encoder"] = max(worst["encoder"], max_difference(got["latent_mean"], mean),
                               max_difference(got["latent_logvar"], logvar))
        # The decoder is fed PyTorch's mean, so its difference is its own.
        worst["decoder"] = max(worst["decoder"], max_difference(run(decoder, mean)["image"], image))
    print(f"{name}: max |onnx - torch| encoder {worst['encoder']:.3g}, decoder {worst['decoder']:.3g}")
    assert max(worst.values()) <= TOLERANCE


def test_metadata_and_parts(tmp_path):
    loaded, _ = loaded_model("vgg", tmp_path, classes=(3, 8))
    proto = onnx.load_from_string(export(loaded))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["classcomp.part"] == "classifier" and props["classcomp.image_size"] == str(SIZE)
    assert json.loads(props["classcomp.classes"]) == [3, 8]
    assert [o.name for o in proto.graph.output] == ["probabilities", "class_index", "logits"]
    with pytest.raises(PartNotApplicable, match="no VAE"):
        export(loaded, "encoder")
    with pytest.raises(ValueError, match="unknown part"):
        export(loaded, "head")


def test_ml_imports_without_onnx():
    """onnx is imported by export() only: a training machine without it still imports the library."""
    code = "import sys, ml.artifacts, ml.train, ml.onnx_export; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""The issue's bar: every model learns MNIST 0 vs 1 at a CPU-sized width within 2 epochs."""

import json

import pytest
import torch

from ml import artifacts
from ml.config import DatasetConfig, RunConfig, TrainingConfig
from ml.data import load_dataset
from ml.models import build_model, parameter_count, predict
from ml.train import train

# The SVM head's default (as many epochs as the VAE) is sized for the paper's batch 16; at batch 128
# and two epochs it would take a few hundred steps, so the head gets ten.
SMALL = dict(epochs=2, width=0.125, batch_size=128, head_epochs=10)


def run_config(model: str, **training) -> RunConfig:
    return RunConfig(
        model=model,
        dataset=DatasetConfig(image_size=32),
        training=TrainingConfig(**{**SMALL, **training}),
        init_from="resnet" if model == "unet-pretrained" else None,
    )


@pytest.fixture(scope="module")
def trained(mnist32):
    """Each model trained once for the whole module (unet-pretrained starts from the resnet)."""
    results = {}
    for name in ("vgg", "resnet", "unet", "unet-pretrained", "vae-svm", "vae-kmeans"):
        init = results["resnet"].model.state_dict() if name == "unet-pretrained" else None
        results[name] = train(run_config(name), mnist32, device="cpu", init_state=init)
    return results


@pytest.mark.parametrize("name", ["vgg", "resnet", "unet", "unet-pretrained"])
def test_cnn_reaches_99_percent(trained, name):
    result = trained[name]
    assert result.final["val_accuracy"] >= 0.99
    assert [r["epoch"] for r in result.history] == [1, 2]
    for record in result.history:
        assert {"loss", "train_accuracy", "val_accuracy", "epoch_seconds", "grad_norm"} <= record.keys()
        assert record["grad_norm"] > 0


@pytest.mark.parametrize("name", ["vae-svm", "vae-kmeans"])
def test_vae_classifiers_reach_97_percent(trained, name):
    result = trained[name]
    assert result.final["val_accuracy"] >= 0.97
    vae_epochs = [r for r in result.history if r["phase"] == "vae"]
    assert len(vae_epochs) == 2
    for record in vae_epochs:
        assert record["loss"] == pytest.approx(record["recon_loss"] + 0.05 * record["kl_loss"], rel=1e-4)
        assert record["kl_loss"] > 0


def test_svm_head_and_kmeans_state(trained, mnist32):
    svm = trained["vae-svm"]
    assert [r["phase"] for r in svm.history].count("head") == SMALL["head_epochs"]
    out = predict(svm.model, mnist32.x_val[:64])
    assert torch.equal(out["class_index"], (out["margin"] > 0).long())

    km = trained["vae-kmeans"].model
    assert sorted(km.cluster_labels.tolist()) == [0, 1]  # one cluster per digit
    out = predict(km, mnist32.x_val[:64])
    assert torch.equal(out["class_index"], km.cluster_labels[out["cluster"]])
    z = km.vae.encode(mnist32.x_val[:64])[0]
    expected = torch.cdist(z, km.centres).min(1).values
    torch.testing.assert_close(out["distance"], expected)


def test_unet_pretrained_starts_from_resnet_encoder(trained):
    resnet = trained["resnet"].model.state_dict()
    fresh = build_model(run_config("unet-pretrained"))
    from ml.train import load_encoder

    load_encoder(fresh, resnet)
    for key, value in fresh.stages.state_dict().items():
        assert torch.equal(value, resnet[f"stages.{key}"])
    wrong_width = build_model(run_config("unet-pretrained", width=0.25))
    with pytest.raises(ValueError, match="same width"):
        load_encoder(wrong_width, resnet)


def test_callback_stops_training(mnist32):
    seen = []
    result = train(run_config("vgg", epochs=5), mnist32, device="cpu", on_epoch=lambda r: seen.append(r) or True)
    assert result.stopped and len(seen) == 1 and len(result.history) == 1


def test_training_is_reproducible_on_cpu():
    data = load_dataset(DatasetConfig(name="gaussian", image_size=32, n_train=256, n_val=64))
    cfg = RunConfig(model="resnet", dataset=DatasetConfig(name="gaussian", image_size=32), training=TrainingConfig(epochs=2, width=0.0625))
    a, b = train(cfg, data, device="cpu"), train(cfg, data, device="cpu")
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
    assert strip(a.history) == strip(b.history)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("name", ["unet", "vae-svm", "vae-kmeans"])
def test_save_load_predicts_identically(trained, mnist32, tmp_path, name):
    cfg = run_config(name)
    directory = artifacts.save(trained[name], cfg, tmp_path / name)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "metrics.json", "weights.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    loaded = artifacts.load(directory)
    assert loaded.config == cfg and loaded.classes == [0, 1]
    config = json.loads((directory / "config.json").read_text())
    assert config["parameter_count"] == parameter_count(trained[name].model)
    x = mnist32.x_val[:128]
    before, after = predict(trained[name].model, x), predict(loaded.model, x)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert loaded.metrics["final"] == trained[name].final


def test_non_safetensors_weights_are_refused(trained, tmp_path):
    directory = artifacts.save(trained["vgg"], run_config("vgg"), tmp_path / "vgg")
    (directory / "weights.safetensors").write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(artifacts.ArtifactError, match="not a safetensors file"):
        artifacts.load(directory)
    with pytest.raises(FileExistsError):
        artifacts.save(trained["vgg"], run_config("vgg"), directory)

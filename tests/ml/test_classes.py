"""K classes: all ten MNIST digits and Fashion-MNIST, at CPU sizes.

The CNNs are ResNets on 32x32 images trained with the `fast` preset at batch 128 over the 60,000
training images: at an eighth of the paper's width two epochs reach 98.4% on MNIST (37 s an epoch on
2 cores); at a sixteenth Fashion-MNIST, 85.8% after two, gets a third (see CNN below for why). The VAE classifiers train
one epoch at an eighth of the width (70% and 57% measured); their floors sit far above chance (10%) and
well below what they reach (tests print it), so a broken K-class head or cluster mapping fails them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.config import CLASS_NAMES, DatasetConfig, RunConfig, TrainingConfig
from ml.data import load_dataset, resample
from ml.evaluation import evaluate
from ml.models import predict
from ml.train import cluster_labels, train

ALL = list(range(10))
# An eighth of the paper's width for ten digits: at a sixteenth, two epochs reached 97.81% on one CPU and
# 96.54% on another (oneDNN's kernels differ by instruction set, and training amplifies it), three 97.53%;
# at an eighth two epochs reached 98.42% in about the same time. Fashion-MNIST: 86.99% after three epochs
# at a sixteenth, 85.76% after two, too near its line to assert.
CNN = TrainingConfig(preset="fast", epochs=2, batch_size=128, width=0.125)
FASHION_CNN = TrainingConfig(preset="fast", epochs=3, batch_size=128, width=0.0625)
VAE = TrainingConfig(preset="fast", epochs=1, batch_size=128, width=0.125, head_epochs=5)


@pytest.fixture(scope="module")
def mnist10(data_dir):
    return load_dataset(DatasetConfig(classes=ALL, image_size=32), data_dir)


@pytest.fixture(scope="module")
def fashion10(fashion_data_dir):
    return load_dataset(DatasetConfig(name="fashion-mnist", classes=ALL, image_size=32), fashion_data_dir)


def test_ten_digit_mnist_resnet_above_97_percent(mnist10):
    cfg = RunConfig("resnet", DatasetConfig(classes=ALL, image_size=32), CNN)
    result = train(cfg, mnist10, device="cpu")
    print(f"MNIST 10 classes, resnet: {result.final['val_accuracy']:.4f} in {result.seconds:.0f} s")
    assert result.final["val_accuracy"] > 0.97
    report = evaluate(result.model, mnist10)
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10_000
    assert np.array_equal(confusion.sum(1), np.bincount(mnist10.y_val.numpy(), minlength=10))
    assert report["class_names"] == [str(d) for d in ALL]


def test_fashion_mnist_resnet_above_85_percent(fashion10):
    cfg = RunConfig("resnet", DatasetConfig(name="fashion-mnist", classes=ALL, image_size=32), FASHION_CNN)
    result = train(cfg, fashion10, device="cpu")
    print(f"Fashion-MNIST 10 classes, resnet: {result.final['val_accuracy']:.4f} in {result.seconds:.0f} s")
    assert result.final["val_accuracy"] > 0.85
    out = predict(result.model, fashion10.x_val[:256])
    assert out["probabilities"].shape == (256, 10)
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(256))


@pytest.mark.parametrize(("model", "floor"), [("vae-svm", 0.6), ("vae-kmeans", 0.4)])
def test_vae_classifiers_on_ten_digits(mnist10, model, floor):
    cfg = RunConfig(model, DatasetConfig(classes=ALL, image_size=32), VAE)
    result = train(cfg, mnist10, device="cpu")
    print(f"MNIST 10 classes, {model}: {result.final['val_accuracy']:.4f}")
    assert result.final["val_accuracy"] > floor
    predicted = predict(result.model, mnist10.x_val[:2000])["class_index"]
    assert set(predicted.tolist()) == set(ALL)  # every class is predicted: none lost to a shared cluster
    if model == "vae-kmeans":
        assert result.model.centres.shape[0] == 10  # n_clusters defaults to one per class


def test_fashion_subset_keeps_its_labels_and_names(fashion_data_dir):
    cfg = DatasetConfig(name="fashion-mnist", classes=[9, 1, 5], image_size=32)
    data = load_dataset(cfg, fashion_data_dir)
    assert data.class_names == ["ankle boot", "trouser", "sandal"] == cfg.class_names
    # Fashion-MNIST has 6,000 training and 1,000 test images of every class, in index order of `classes`.
    assert np.array_equal(np.bincount(data.y_train.numpy()), [6000] * 3)
    assert np.array_equal(np.bincount(data.y_val.numpy()), [1000] * 3)


def test_cluster_labels_give_every_class_a_cluster():
    rng = np.random.default_rng(0)
    # Ten classes, twelve clusters; the majority of every cluster is class 0 (a heavy imbalance).
    clusters = rng.integers(0, 12, 5000)
    labels = np.where(rng.random(5000) < 0.6, 0, clusters % 10)
    mapping = cluster_labels(clusters, labels, 12, 10)
    assert set(mapping) == set(range(10))


def test_too_few_clusters_for_the_classes_are_refused():
    with pytest.raises(ValueError, match="n_clusters must be at least the number of classes"):
        RunConfig("vae-kmeans", DatasetConfig(classes=ALL), TrainingConfig(n_clusters=5))
    assert RunConfig("vae-kmeans", DatasetConfig(classes=ALL)).n_clusters == 10
    assert RunConfig("vae-kmeans", DatasetConfig(classes=[3, 8])).n_clusters == 2


@pytest.mark.parametrize("classes", [[4], [1, 1, 2], list(range(11)), [0, 10]])
def test_bad_class_lists_are_refused(classes):
    with pytest.raises(ValueError, match="classes|labels"):
        DatasetConfig(classes=classes)


def test_gaussian_images_have_two_classes_only():
    for classes in ([0, 1, 2], [1, 0]):
        with pytest.raises(ValueError, match="classes"):
            DatasetConfig(name="gaussian", classes=classes)


# Imbalance on K classes: sizes checked against their definition, computed here with numpy.


def sizes(cfg: DatasetConfig, available: list[int]) -> np.ndarray:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(available)])
    _, kept = resample(y[:, None].float(), y, cfg.train_weights(), torch.Generator().manual_seed(0))
    return np.bincount(kept.numpy(), minlength=len(available))


def test_one_class_imbalance_makes_the_named_class_r_times_each_other():
    cfg = DatasetConfig(classes=[0, 1, 2, 3], condition="imbalance", imbalance=0.8, imbalance_class=2)
    n = sizes(cfg, [1000, 900, 1100, 1000])
    # r = 0.8 / 0.2 = 4: class 2 keeps all 1100, every other class 1100 / 4 = 275.
    assert n.tolist() == [275, 275, 1100, 275]


def test_geometric_imbalance_falls_by_the_same_factor_from_the_named_class():
    cfg = DatasetConfig(classes=ALL, condition="imbalance", imbalance=0.9, imbalance_profile="geometric",
                        imbalance_class=3)
    n = sizes(cfg, [6000] * 10)
    order = [(3 + step) % 10 for step in range(10)]  # from the named class on, wrapping round
    expected = 6000 * np.geomspace(1.0, 1 / 9, 10)
    assert np.abs(n[order] - expected).max() <= 0.5
    assert n[3] == 6000 and n[2] == round(6000 / 9)


def test_two_class_profiles_are_the_papers_share():
    for profile in ("one", "geometric"):
        cfg = DatasetConfig(condition="imbalance", imbalance=0.9, imbalance_profile=profile)
        n = sizes(cfg, [5923, 6742])
        assert n[1] == 6742 and n[0] == round(6742 / 9)  # 90% ones, as the paper's imbalance


def test_noisy_resampling_on_k_classes_uses_the_noisy_share(data_dir):
    cfg = DatasetConfig(classes=[2, 5, 7], image_size=32, condition="noisy", imbalance_class=5)
    data = load_dataset(cfg, data_dir)
    n = np.bincount(data.y_train.numpy())
    # 0.6 under noisy: the named class 1.5 times each other; digit 5 (5,421 images) is the limit.
    assert n[1] == 5421 and n[0] == n[2] == round(5421 / 1.5)


def test_class_names_of_each_dataset():
    assert DatasetConfig(name="fashion-mnist", classes=ALL).class_names == list(CLASS_NAMES["fashion-mnist"])
    assert CLASS_NAMES["fashion-mnist"][9] == "ankle boot"
    assert DatasetConfig(classes=[3, 8]).class_names == ["3", "8"]
    assert DatasetConfig(name="fashion-mnist", classes=ALL).description == "Fashion-MNIST, 10 classes"
    assert DatasetConfig(classes=[3, 8]).description == "MNIST 3 vs 8"

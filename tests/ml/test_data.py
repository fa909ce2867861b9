import numpy as np
import pytest
import torch
from scipy import stats

from ml.config import DatasetConfig
from ml.data import MissingDataError, corrupt, load_dataset, load_images


def test_mnist_two_digits_in_paper_range(mnist32, data_dir):
    images, digits = load_images("mnist", data_dir, train=True)
    n0, n1 = int((digits == 0).sum()), int((digits == 1).sum())
    assert len(mnist32.x_train) == n0 + n1
    assert int(mnist32.y_train.sum()) == n1
    assert mnist32.x_train.shape[1:] == (1, 32, 32)
    assert mnist32.x_train.min() == -1.0 and mnist32.x_train.max() == 1.0
    assert mnist32.classes == [0, 1]


def test_other_digit_pair_keeps_original_labels(data_dir):
    data = load_dataset(DatasetConfig(classes=[3, 8], image_size=32), data_dir)
    _, digits = load_images("mnist", data_dir, train=False)
    assert data.classes == [3, 8]
    assert len(data.y_val) == int(((digits == 3) | (digits == 8)).sum())
    assert int(data.y_val.sum()) == int((digits == 8).sum())


def test_imbalance_resamples_training_only(mnist32, data_dir):
    data = load_dataset(DatasetConfig(image_size=32, condition="imbalance", imbalance=0.9), data_dir)
    fraction = data.y_train.float().mean().item()
    assert abs(fraction - 0.9) <= 0.005
    assert torch.equal(data.x_val, mnist32.x_val) and torch.equal(data.y_val, mnist32.y_val)
    # Every kept training image is a real one from the vanilla set.
    originals = {tuple(row) for row in mnist32.x_train[:, 0, 16].tolist()}
    assert all(tuple(row) in originals for row in data.x_train[:200, 0, 16].tolist())


def test_additive_noise_is_standard_normal(mnist32):
    x = mnist32.x_val[:512]
    noisy = corrupt(x, torch.Generator().manual_seed(0), augment=False)
    residual = (noisy - x).flatten().numpy()
    assert abs(residual.mean()) < 0.01
    assert abs(residual.std() - 1.0) < 0.01
    assert stats.kstest(residual[:20000], "norm").pvalue > 0.001


def test_noisy_condition_corrupts_train_batches_and_validation(mnist32, data_dir):
    x = mnist32.x_val[:256]
    augmented = corrupt(x, torch.Generator().manual_seed(0))
    noise_only = corrupt(x, torch.Generator().manual_seed(0), augment=False)
    # The geometric and photometric corruptions move pixels well beyond what the noise alone does.
    assert (augmented - x).abs().mean() > (noise_only - x).abs().mean() + 0.05
    # Fresh corruptions on every call, reproducible under the same seed.
    again = corrupt(x, torch.Generator().manual_seed(0))
    other = corrupt(x, torch.Generator().manual_seed(1))
    assert torch.equal(augmented, again) and not torch.allclose(augmented, other)

    cfg = DatasetConfig(image_size=32, condition="noisy")
    data = load_dataset(cfg, data_dir)
    assert data.noisy
    # Training images stay clean, as they are corrupted per batch during training: each is a
    # vanilla image, whatever resampling the condition also applies.
    originals = {tuple(row) for row in mnist32.x_train[:, 0, 16].tolist()}
    assert all(tuple(row) in originals for row in data.x_train[:200, 0, 16].tolist())
    # Validation is corrupted once, with a fixed seed.
    assert not torch.allclose(data.x_val, mnist32.x_val)
    assert torch.equal(data.x_val, corrupt(mnist32.x_val, torch.Generator().manual_seed(cfg.seed + 1)))
    # The N(0, 1) noise's unit spread, plus the augmentations' (the lifted backgrounds most): ~1.2.
    assert 1.0 < (data.x_val - mnist32.x_val).std().item() < 1.5


@pytest.mark.parametrize("mean,std", [([-1.0, 1.0], [3.0, 3.0]), ([0.5, 2.0], [1.0, 0.5])])
def test_gaussian_classes_match_requested_moments(mean, std):
    cfg = DatasetConfig(name="gaussian", image_size=16, mean=mean, std=std, n_train=4000, n_val=10)
    data = load_dataset(cfg)
    assert data.classes == [0, 1]
    assert int(data.y_train.sum()) == 2000
    for c in (0, 1):
        pixels = data.x_train[data.y_train == c].flatten().numpy()
        # 2000 images x 256 pixels: standard errors are ~std/700.
        assert pixels.mean() == pytest.approx(mean[c], abs=0.01 * std[c] + 0.005)
        assert pixels.var() == pytest.approx(std[c] ** 2, rel=0.01)


def test_gaussian_per_pixel_parameters_and_seed():
    size = 8
    mean0 = np.linspace(-2, 2, size * size).tolist()
    cfg = DatasetConfig(name="gaussian", image_size=size, mean=[mean0, 1.0], std=[0.1, 1.0], n_train=2000, n_val=10)
    data = load_dataset(cfg)
    per_pixel = data.x_train[data.y_train == 0].mean(0).flatten().numpy()
    np.testing.assert_allclose(per_pixel, mean0, atol=0.02)
    assert torch.equal(load_dataset(cfg).x_train, data.x_train)
    with pytest.raises(ValueError, match="image_size"):
        DatasetConfig(name="gaussian", image_size=size, mean=[[0.0] * 10, 1.0])


def test_missing_mnist_says_where_and_how(tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_dataset(DatasetConfig(image_size=32), tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "CLASSCOMP_DATA_DIR" in message and "CLASSCOMP_DOWNLOAD" in message

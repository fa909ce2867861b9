"""Artifact checksums: the SHA-256 recorded for a model's weights tells damaged files from missing ones."""

import hashlib
import json
import shutil
import struct

import pytest

from ml import artifacts
from ml.config import DatasetConfig, RunConfig, TrainingConfig
from ml.data import load_dataset
from ml.train import train


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny VGG on synthetic images, saved once; each test damages its own copy."""
    cfg = RunConfig(model="vgg", dataset=DatasetConfig(name="gaussian", image_size=32, n_train=64, n_val=32),
                    training=TrainingConfig(epochs=1, width=0.125, batch_size=32))
    result = train(cfg, load_dataset(cfg.dataset), device="cpu")
    return artifacts.save(result, cfg, tmp_path_factory.mktemp("saved") / "vgg")


@pytest.fixture
def model_dir(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "vgg")


def test_the_checksum_is_the_sha256_of_the_weights_file(model_dir):
    expected = hashlib.sha256((model_dir / artifacts.WEIGHTS).read_bytes()).hexdigest()
    assert artifacts.weights_sha256(model_dir) == expected
    artifacts.verify(model_dir, expected)
    assert artifacts.load(model_dir, sha256=expected).classes == [0, 1]


def test_flipped_tensor_bytes_fail_the_checksum_though_the_file_still_parses(model_dir):
    sha256 = artifacts.weights_sha256(model_dir)
    weights = model_dir / artifacts.WEIGHTS
    data = bytearray(weights.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    data[header_end : header_end + 64] = bytes(b ^ 0xFF for b in data[header_end : header_end + 64])
    weights.write_bytes(bytes(data))
    artifacts.load(model_dir)  # still a well-formed safetensors file: only the checksum can tell
    for check in (lambda: artifacts.verify(model_dir, sha256), lambda: artifacts.load(model_dir, sha256=sha256)):
        with pytest.raises(artifacts.ArtifactCorrupt, match=f"not the {sha256} recorded"):
            check()


def test_truncated_or_unreadable_files_are_corrupt(model_dir):
    sha256 = artifacts.weights_sha256(model_dir)
    weights = model_dir / artifacts.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(artifacts.ArtifactCorrupt, match="not a safetensors file"):
        artifacts.load(model_dir)
    with pytest.raises(artifacts.ArtifactCorrupt):
        artifacts.verify(model_dir, sha256)
    (model_dir / artifacts.CONFIG).write_text(json.dumps({"run": {"model": "no-such-model"}}))
    with pytest.raises(artifacts.ArtifactCorrupt, match="does not describe a model"):
        artifacts.load(model_dir)


def test_a_gone_weights_file_or_directory_is_missing_not_corrupt(model_dir):
    sha256 = artifacts.weights_sha256(model_dir)
    (model_dir / artifacts.WEIGHTS).unlink()
    for check in (lambda: artifacts.verify(model_dir, sha256), lambda: artifacts.load(model_dir, sha256=sha256)):
        with pytest.raises(artifacts.ArtifactMissing):
            check()
    shutil.rmtree(model_dir)
    with pytest.raises(artifacts.ArtifactMissing):
        artifacts.load(model_dir)

"""`classcomp train` and `classcomp models` as a user runs them: a subprocess, stdout and files."""

import json
import os
import subprocess
import sys

from ml import artifacts
from ml.config import DatasetConfig
from ml.data import load_dataset
from ml.models import predict


def classcomp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_train_writes_artifacts_and_ends_with_json(tmp_path, data_dir, mnist32):
    out = tmp_path / "vae"
    done = classcomp("train", "--model", "vae-kmeans", "--epochs", "1", "--batch-size", "128", "--width", "0.125",
                     "--image-size", "32", "--out", str(out), env={"CLASSCOMP_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["val_accuracy"] >= 0.95 and final["out"] == str(out)
    assert "epoch=1" in done.stderr and "batch" in done.stderr  # per-epoch metrics and the progress bar
    loaded = artifacts.load(out)
    correct = (predict(loaded.model, mnist32.x_val)["class_index"] == mnist32.y_val).sum().item()
    assert correct / len(mnist32.y_val) == final["val_accuracy"]

    done = classcomp("evaluate", str(out), "--condition", "noisy", env={"CLASSCOMP_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    noisy = load_dataset(DatasetConfig(image_size=32, condition="noisy"), data_dir)
    predicted = predict(loaded.model, noisy.x_val)["class_index"]
    assert report["condition"] == "noisy" and report["trained_condition"] == "vanilla"
    assert report["accuracy"] == (predicted == noisy.y_val).sum().item() / len(noisy.y_val)
    assert sum(map(sum, report["confusion_matrix"])) == len(noisy.y_val)


def test_train_without_data_says_how_to_fix(tmp_path):
    done = classcomp("train", "--model", "vgg", "--out", str(tmp_path / "x"), env={"CLASSCOMP_DATA_DIR": str(tmp_path)})
    assert done.returncode != 0
    assert "CLASSCOMP_DATA_DIR" in done.stderr and not (tmp_path / "x").exists()


def test_bad_flag_value_is_a_clear_error(tmp_path):
    done = classcomp("train", "--model", "vgg", "--classes", "3", "3", "--out", str(tmp_path / "x"))
    assert done.returncode != 0 and "different labels" in done.stderr


def test_models_lists_paper_sizes():
    done = classcomp("models")
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in done.stdout.splitlines()}
    assert set(counts) == {"vgg", "resnet", "unet", "unet-pretrained", "vae-svm", "vae-kmeans", "conv-vae-svm",
                           "conv-vae-kmeans"}
    # VGG-19 convolutions (20.0M at one input channel) plus the 4096-wide head on 512x2x2 features.
    assert counts["vgg"] == 45_210_946
    # The authors' UNet (one-conv bottleneck and decoder blocks) is smaller than their ResNet.
    assert counts["resnet"] > counts["vgg"] > counts["unet"] == counts["unet-pretrained"] > counts["vae-svm"]
    assert counts["vae-svm"] > counts["conv-vae-svm"] > 0

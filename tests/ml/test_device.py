"""pick_device: a CUDA device asked for by name is either usable or refused with the likely cause,
never quietly replaced by the CPU."""

import pytest
import torch

from ml.train import pick_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_without_a_usable_gpu_is_refused_with_the_likely_causes(requested):
    with pytest.raises(RuntimeError) as refused:
        pick_device(requested)
    message = str(refused.value)
    assert f"device {requested!r} was requested" in message
    if torch.version.cuda is None:
        assert "CPU-only build" in message
    else:
        assert "no GPU is visible" in message and "driver is too old" in message


def test_a_cpu_only_torch_is_named_as_the_cause(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="CPU-only build"):
        pick_device("cuda")


def test_a_gpu_index_beyond_those_visible_is_refused(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match=r"only 1 CUDA device\(s\) are visible"):
        pick_device("cuda:1")


def test_without_a_request_the_cpu_is_chosen_when_cuda_is_unusable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")

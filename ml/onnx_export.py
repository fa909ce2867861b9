"""A trained model as ONNX: one self-contained graph per part, with a dynamic batch dimension.

    classifier   image (N, 1, S, S) -> probabilities (N, K), class_index (N,), and by kind
                 logits (CNNs), scores and, with two classes, margin (VAE + SVM),
                 cluster and distance (VAE + K-means): what `ml.models.predict` returns
    encoder      image -> latent_mean, latent_logvar (N, D): the VAE's encoder, as `embed` serves it
    decoder      latent (N, D) -> image (N, 1, S, S) in [-1, 1]: decoding `latent_mean` is `reconstruct`

One graph per part, not one graph with every output, because the decoder's input is a latent rather
than an image, and because a serving runtime (KServe, Triton, onnxruntime) deploys one file as one
model: a client that only classifies should not run or ship a decoder. The image input is the model's
own input, `ml.data.to_model_input`'s: grayscale at the model's side S, scaled to [-1, 1]; the file's
metadata (`classcomp.*`) states it with the classes, so the file alone says how to feed and read it.

Export goes through `torch.export` in strict mode (TorchDynamo) and the torch.export-based ONNX
exporter. The legacy TorchScript exporter (`dynamo=False`) is deprecated, and its tracer bakes
`len(z)` in ConvVAE.decode into a constant, so its conv-VAE decoders only take the batch size they
were traced with; non-strict torch.export specialises `len()` the same way. Strict mode traces it
as the symbolic batch size.

onnx and onnxscript (torch's exporter needs it) are imported here only, so `ml` imports without them.
"""

from __future__ import annotations

import copy
import json
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.artifacts import LoadedModel
from ml.models import VAESVM, VAEKMeans, vae_of

PARTS = ("classifier", "encoder", "decoder")
# The opset torch's ONNX functions are written for: no version conversion runs after export, and any
# onnxruntime since 1.14 (Triton 23.x and later) reads it.
OPSET = 18
INPUT_NORMALISATION = "grayscale pixels p in [0, 255], resized to S x S (bilinear, antialiased), as 2 * p / 255 - 1"
# torch.export and the ONNX exporter keep process-wide state (dynamo's caches, the fake-tensor mode);
# exports requested at once from a server's threads take turns.
_export_lock = threading.Lock()


class PartNotApplicable(ValueError):
    """The model has no such part: a CNN has no encoder or decoder."""


class _Classifier(nn.Module):
    """`ml.models.predict` as one traceable forward pass, outputs in `outputs` order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        if isinstance(model, VAEKMeans):
            self.outputs = ("probabilities", "class_index", "cluster", "distance")
        elif isinstance(model, VAESVM):
            two = model.head.out_features == 2
            self.outputs = ("probabilities", "class_index", "scores", *(("margin",) if two else ()))
        else:
            self.outputs = ("probabilities", "class_index", "logits")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        if isinstance(model, VAEKMeans):
            features = model.features(model.vae.encode(x)[0].float())
            # Not torch.cdist, which `assign` uses: it picks its algorithm by the row count (a matrix-product
            # form above 25 rows), so torch.export traces it only for a batch bounded by 25. The direct
            # Euclidean distance is its value, for any batch.
            distances = (features.unsqueeze(1) - model.centres.unsqueeze(0)).pow(2).sum(-1).sqrt()
            distance, cluster = distances.min(dim=1)
            label = model.cluster_labels[cluster]
            return F.one_hot(label, model.num_classes).float(), label, cluster, distance
        if isinstance(model, VAESVM):
            scores = model.scores(x).float()
            out = (torch.softmax(scores, 1), scores.argmax(1), scores)
            return (*out, scores[:, 1] - scores[:, 0]) if len(self.outputs) == 4 else out
        logits = model(x).float()
        probabilities = torch.softmax(logits, dim=1)
        return probabilities, probabilities.argmax(1), logits


class _Encoder(nn.Module):
    outputs = ("latent_mean", "latent_logvar")

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.vae.encode(x)


class _Decoder(nn.Module):
    outputs = ("image",)

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z)


def graph_module(model: nn.Module, part: str = "classifier") -> nn.Module:
    """The module whose forward pass is the part's graph (its output names in `.outputs`)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; the parts are {', '.join(PARTS)}")
    if part == "classifier":
        return _Classifier(model).eval()
    try:
        vae = vae_of(model)
    except ValueError as exc:
        raise PartNotApplicable(f"{exc}; only the VAE models have an encoder and a decoder") from exc
    return (_Encoder if part == "encoder" else _Decoder)(vae).eval()


def metadata(loaded: LoadedModel, part: str) -> dict[str, str]:
    """What a consumer of the file needs beyond the graph: the classes and the input's scale."""
    cfg = loaded.config
    return {
        "classcomp.model": cfg.model,
        "classcomp.part": part,
        "classcomp.dataset": cfg.dataset.name,
        "classcomp.classes": json.dumps(loaded.classes),
        "classcomp.class_names": json.dumps(list(cfg.dataset.class_names)),
        "classcomp.image_size": str(cfg.dataset.image_size),
        "classcomp.input": INPUT_NORMALISATION,
        "classcomp.run_config": json.dumps(cfg.to_dict()),
    }


def _name_batch_dimension(proto, symbol: str) -> None:
    """Call torch.export's symbol for the batch size (`s6`, say) `batch`, the name serving runtimes show."""
    graph = proto.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"


def export(loaded: LoadedModel, part: str = "classifier", extra_metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX file (serialised ModelProto) of one part of a loaded model; PartNotApplicable for a
    part the model lacks. Takes seconds: torch.export traces the model in Python."""
    import onnx

    # A private CPU copy: the caller's model may live on a GPU and be in use by other threads.
    model = copy.deepcopy(loaded.model).to("cpu").eval()
    module = graph_module(model, part)
    size = loaded.config.dataset.image_size
    if part == "decoder":
        example, input_name = torch.zeros(2, loaded.config.training.latent_dim), "latent"
    else:
        example, input_name = torch.zeros(2, 1, size, size), "image"
    # Traced with 2 images: a batch of 1 would let the tracer specialise the batch dimension to 1.
    batch = torch.export.Dim("batch", min=1)
    with _export_lock, torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=True)
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=[input_name],
                                         output_names=list(module.outputs), opset_version=OPSET, verbose=False)
    proto = onnx_program.model_proto
    _name_batch_dimension(proto, proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param)
    onnx.helper.set_model_props(proto, {**metadata(loaded, part), **(extra_metadata or {})})
    return proto.SerializeToString()

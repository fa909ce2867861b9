"""The Open Inference Protocol (KServe's v2 protocol, Triton's HTTP/REST API) beside /v1: server health and
metadata, model metadata and readiness, and inference on tensors, with Triton's binary tensor data
extension (tritonclient sends its inputs that way unless told otherwise).

`{model_name}` is any model reference /v1 takes (an id, `name@alias`, or a bare name: its newest version);
`/versions/{model_version}` names `name/version`. Inference runs through /v1 predict's model cache and
micro-batcher, and its tensor through the normalisation of predict's JSON pixel arrays, so both give the
same probabilities. Errors are the protocol's `{"error": "message"}` (service/errors.py).

The schemas are the protocol's own, so they live here rather than in service/schemas.py.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version as package_version
from typing import Annotated, Any, Union

import numpy as np
import torch
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, WithJsonSchema,
)
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from typing_extensions import TypeAliasType

from ml.artifacts import LoadedModel
from ml.config import RunConfig
from service import inference, registry
from service.api.deps import ModelCacheDep, get_model_or_404, resolve_or_404
from service.api.inference import load
from service.errors import ApiError, validation_message
from service.inference import ModelCache

INPUT = "image"
# Output name -> (protocol datatype, little-endian numpy type of its binary form).
OUTPUTS = {"probabilities": ("FP32", "<f4"), "class_index": ("INT64", "<i8"), "label": ("INT64", "<i8")}
# Input datatype -> the little-endian numpy type of its binary form, and its pixel scale.
INPUT_TYPES = {"FP32": ("<f4", "grayscale in [0, 1], the scale of /v1 predict's JSON `pixels`"),
               "UINT8": ("u1", "grayscale 0-255, the scale of an 8-bit image")}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "pytorch"
# Parameters of extensions this server does not implement, which it would otherwise answer wrongly.
UNSUPPORTED_PARAMETERS = {"shared_memory_region": "Triton's shared-memory extension",
                          "classification": "Triton's classification extension"}


class InferenceErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, a human sentence")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension")


class ModelMetadata(BaseModel):
    name: str = Field(description="the model's registered name")
    versions: list[str] = Field(description="every version of that name, oldest first")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


# The protocol's parameter values.
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class _Parameters(BaseModel):
    # Other parameters belong to extensions or to the caller; the ones this server would answer wrongly
    # are refused by name (UNSUPPORTED_PARAMETERS).
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]


class InputParameters(_Parameters):
    binary_data_size: int | None = Field(None, ge=0, strict=True, description="binary tensor data extension: the "
                                         "input's data is this many bytes of the binary part of the body")


class OutputParameters(_Parameters):
    binary_data: bool | None = Field(None, strict=True, description="binary tensor data extension: answer this "
                                     "output in the binary part of the body (default: the request's "
                                     "binary_data_output)")


class RequestParameters(_Parameters):
    binary_data_output: bool = Field(False, strict=True, description="binary tensor data extension: the default "
                                     "of every output's binary_data")


# Strict: JSON true/false and strings are not numbers (ints are); NaN and Infinity are not either.
Element = Annotated[float, Field(strict=True, allow_inf_nan=False)]
TensorData = TypeAliasType("TensorData", list[Union[Element, "TensorData"]])


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f"`{INPUT}`")
    shape: list[Annotated[int, Field(strict=True, ge=0)]] = Field(description="[N, 1, S, S] or [N, S, S], S the "
                                                                  "model's image size (its metadata)")
    datatype: str = Field(description="; ".join(f"{name}: {scale}" for name, (_, scale) in INPUT_TYPES.items()))
    parameters: InputParameters = Field(default_factory=InputParameters)
    # Documented flat: a recursive schema is all a validator needs, but it is no help to a reader.
    data: Annotated[TensorData | None, WithJsonSchema({
        "type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
        "description": "the elements in row-major order, flat or nested as the shape; absent when "
                       "parameters.binary_data_size gives them in binary"})] = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=", ".join(f"`{name}`" for name in OUTPUTS))
    parameters: OutputParameters = Field(default_factory=OutputParameters)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="echoed in the response")
    parameters: RequestParameters = Field(default_factory=RequestParameters)
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to answer; all of them by default")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, int] | None = Field(None, description="binary_data_size of an output answered in binary")
    data: list[float] | None = Field(None, description="the elements in row-major order; absent for a binary output")


class InferenceResponse(BaseModel):
    model_name: str = Field(description="the registered name of the model that answered")
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs substituted: an OpenAPI request body's `#/$defs/...` would
    point into the OpenAPI document, not into the schema."""
    defs = schema.pop("$defs", {})

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return substitute(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: substitute(value) for key, value in node.items()}
        if isinstance(node, list):
            return [substitute(value) for value in node]
        return node

    return substitute(schema)


INFER_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline(InferenceRequest.model_json_schema()),
                "examples": {"one 2x2 image": {"value": {"inputs": [
                    {"name": INPUT, "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0, 0.5, 1, 0]}]}}},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"binary tensor data extension: the JSON request, its length in bytes in the "
                               f"{HEADER_LENGTH} header, then the binary data of the inputs that give a "
                               f"binary_data_size, in their order",
            },
        },
    },
    "parameters": [{"name": HEADER_LENGTH, "in": "header", "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "binary tensor data extension: the length of the JSON part of the body"}],
}

ERRORS = {"model": InferenceErrorResponse}
# FastAPI documents a 422 for any route with parameters; under /v2 it would take the protocol's shape too.
router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"],
                   responses={422: {**ERRORS, "description": "a malformed parameter"}})
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {**ERRORS, "description": "no such model"},
    409: {**ERRORS, "description": "the model's files do not match their recorded checksum"},
    410: {**ERRORS, "description": "the model's files are gone"},
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": f"JSON; or, when an output is asked for in binary, the JSON response (its length in the "
                         f"{HEADER_LENGTH} header) followed by those outputs' data, in their order"},
    400: {**ERRORS, "description": "the request or a tensor is not what the model takes"},
    **MODEL_ERRORS,
    413: {**ERRORS, "description": "the body or its pixels are over the limits"},
    415: {**ERRORS, "description": "a compressed body (Content-Encoding)"},
}


def _metadata(ref: str) -> dict:
    with registry.session_scope() as session:
        model = get_model_or_404(session, ref)
        versions = registry.get_name(session, model.name).versions
    size, classes = RunConfig.from_dict(model.config).dataset.image_size, len(model.classes)
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 1, size, size]}],
        "outputs": [{"name": name, "datatype": datatype, "shape": [-1, classes] if name == "probabilities" else [-1]}
                    for name, (datatype, _) in OUTPUTS.items()],
    }


def _load(cache: ModelCache, ref: str) -> tuple[registry.ModelKey, LoadedModel]:
    """The model's key (the response names its name and version) and the model: the key columns alone are
    read on each request, as /v1 predict reads them for a name or alias."""
    with registry.session_scope() as session:
        key = resolve_or_404(session, ref)
    _, loaded = load(cache, key.id)
    return key, loaded


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_tensor", message)


def _parse(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON request and the binary part of the body after it."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdecimal() or int(header_length) > len(body):
            raise _bad(f"the {HEADER_LENGTH} header must be a length in bytes within the body's {len(body)}; "
                       f"it is {header_length!r}")
        header, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise _bad(validation_message(list(exc.errors()))) from exc
    for place, parameters in [("parameters", request.parameters)] + [
            (f"inputs[{i}].parameters", t.parameters) for i, t in enumerate(request.inputs)] + [
            (f"outputs[{i}].parameters", t.parameters) for i, t in enumerate(request.outputs or [])]:
        for key in parameters.model_extra or {}:
            extension = next((e for prefix, e in UNSUPPORTED_PARAMETERS.items() if key.startswith(prefix)), None)
            if extension is not None:
                raise _bad(f"{place}.{key}: {extension} is not supported by this server; send the data in the request")
    names = [o.name for o in request.outputs or []]
    if unknown := [n for n in names if n not in OUTPUTS]:
        raise _bad(f"the model has no output {unknown[0]!r}; its outputs are {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        raise _bad(f"each output may be asked for once; the request names {names}")
    declared = sum(t.parameters.binary_data_size or 0 for t in request.inputs)
    if declared != len(binary):
        raise _bad(f"the inputs' binary_data_size add up to {declared} bytes, but {len(binary)} bytes follow the "
                   f"JSON request" + ("" if header_length is not None else f" (no {HEADER_LENGTH} header)"))
    return request, binary


def _images(tensor: RequestInput, binary: bytes, image_size: int) -> list[torch.Tensor]:
    """The input's images (S, S): FP32 on the scale of service.inference.pixel_images, [0, 255]; UINT8 as
    decoded images are."""
    if tensor.name != INPUT:
        raise _bad(f"the model's input is named {INPUT!r}, not {tensor.name!r}")
    if tensor.datatype not in INPUT_TYPES:
        kinds = " or ".join(f"{name} ({scale})" for name, (_, scale) in INPUT_TYPES.items())
        raise _bad(f"the input's datatype must be {kinds}, not {tensor.datatype!r}")
    s, shape = image_size, tensor.shape
    if not (shape[1:] in ([1, s, s], [s, s]) and shape[0] >= 1):
        raise _bad(f"the input's shape must be [N, 1, {s}, {s}] or [N, {s}, {s}] with N >= 1 (this model's images are "
                   f"{s}x{s}), not {shape}")
    count = math.prod(shape)
    wire = np.dtype(INPUT_TYPES[tensor.datatype][0])
    if tensor.parameters.binary_data_size is not None:
        if tensor.data is not None:
            raise _bad("the input gives both data and parameters.binary_data_size; send one")
        if tensor.parameters.binary_data_size != count * wire.itemsize:
            raise _bad(f"the input's binary_data_size is {tensor.parameters.binary_data_size} bytes; a "
                       f"{tensor.datatype} tensor of shape {shape} is {count * wire.itemsize}")
        array = np.frombuffer(binary, dtype=wire)
    elif tensor.data is None:
        raise _bad("the input has no data: give `data`, or parameters.binary_data_size and the bytes after the JSON")
    else:
        try:
            array = np.asarray(tensor.data, dtype=np.float64)
        except ValueError as exc:
            raise _bad(f"the input's data is a ragged array ({exc})") from exc
        if array.ndim > 1 and list(array.shape) != shape:
            raise _bad(f"the input's nested data has the shape {list(array.shape)}, not the {shape} it declares")
        if array.size != count:
            raise _bad(f"the input's data holds {array.size} elements; shape {shape} has {count}")
        if wire.kind == "u" and not np.all((array >= 0) & (array <= 255) & (array == np.floor(array))):
            raise _bad("UINT8 data must be whole numbers from 0 to 255")
    if wire.kind == "f" and not np.all((array >= 0) & (array <= 1)):  # NaN fails both comparisons
        raise _bad("FP32 pixels must be grayscale values in [0, 1]; scale 8-bit pixels by 1/255, or send UINT8")
    inference.check_pixels([(f"{INPUT}[{i}]", s, s) for i in range(shape[0])])
    # A native copy: the body's bytes are read-only and little-endian. float32 before the scaling, as in
    # pixel_images, so that the numbers are /v1 predict's exactly.
    images = torch.from_numpy(array.astype(np.float32 if wire.kind == "f" else np.uint8)).reshape(shape[0], s, s)
    return list(images.mul_(255) if wire.kind == "f" else images)


def _batch(body: bytes, header_length: str | None, image_size: int) -> tuple[InferenceRequest, torch.Tensor]:
    """For the threadpool, in a decode slot, like /v1's JSON pixel arrays."""
    with inference.decode_slots:
        request, binary = _parse(body, header_length)
        images = _images(request.inputs[0], binary, image_size)
        x = inference.batch_from_pixels(images, image_size).x
    inference.release_freed_memory(x.numel())
    return request, x


def _response(request: InferenceRequest, key: registry.ModelKey, loaded: LoadedModel, predictions: list[dict]) -> Response:
    labels = [str(c) for c in loaded.classes]
    values = {
        "probabilities": [[p["probabilities"][label] for label in labels] for p in predictions],
        "class_index": [p["class_index"] for p in predictions],
        "label": [p["label"] for p in predictions],
    }
    outputs, chunks = [], []
    for output in request.outputs or [RequestOutput(name=name) for name in OUTPUTS]:
        datatype, binary_type = OUTPUTS[output.name]
        array = np.asarray(values[output.name], dtype=binary_type)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        binary = output.parameters.binary_data
        if binary if binary is not None else request.parameters.binary_data_output:
            chunks.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    body = {"model_name": key.name, "model_version": str(key.version),
            **({"id": request.id} if request.id is not None else {}), "outputs": outputs}
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


async def _infer(ref: str, request: Request, cache: ModelCache) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(415, "unsupported_content_encoding",
                       f"the body is {encoding}-compressed; this server takes uncompressed requests")
    key, loaded = await run_in_threadpool(_load, cache, ref)  # an unknown model is a 404 before the body is read
    body = await request.body()
    size = loaded.config.dataset.image_size
    parsed, x = await run_in_threadpool(_batch, body, request.headers.get(HEADER_LENGTH), size)
    predictions = await request.app.state.predict_batcher.predict(loaded, x)
    return _response(parsed, key, loaded, predictions)


ModelName = Annotated[str, Path(description="the model: a registered name (its newest version), `name@alias`, or an "
                                "id", examples=["vgg-mnist-0v1-vanilla"])]
ModelVersion = Annotated[str, Path(description="a version of that name", examples=["1"])]


@router.get("/health/live", response_model=ServerLive, summary="Liveness: the process answers")
async def server_live() -> dict:
    return {"live": True}


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Readiness for inference: the registry answers",
    description="Unlike /readyz, no worker is needed: inference runs in this process.",
    responses={503: {**ERRORS, "description": "the registry is unreachable"}},
)
def server_ready() -> dict:
    try:
        with registry.session_scope() as session:
            session.execute(select(1))
    except Exception as exc:
        raise ApiError(503, "not_ready", f"the registry is unreachable ({type(exc).__name__}: {exc})") from exc
    return {"ready": True}


@router.get("", response_model=ServerMetadata, summary="Server metadata: name, version and protocol extensions")
async def server_metadata() -> dict:
    return {"name": "classcomp", "version": package_version("classcomp"), "extensions": EXTENSIONS}


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=MODEL_ERRORS, summary="Model metadata")
async def model_metadata(model_name: ModelName) -> dict:
    return await run_in_threadpool(_metadata, model_name)


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=MODEL_ERRORS,
            summary="Model metadata of one version")
async def model_version_metadata(model_name: ModelName, model_version: ModelVersion) -> dict:
    return await run_in_threadpool(_metadata, f"{model_name}/{model_version}")


async def _ready(ref: str, cache: ModelCache) -> dict:
    key, _ = await run_in_threadpool(_load, cache, ref)
    return {"name": key.name, "ready": True}


READY_DESCRIPTION = "Loads the model into the inference cache if it is not there: ready once it answers."


@router.get("/models/{model_name}/ready", response_model=ModelReady, responses=MODEL_ERRORS,
            summary="Model readiness", description=READY_DESCRIPTION)
async def model_ready(model_name: ModelName, cache: ModelCacheDep) -> dict:
    return await _ready(model_name, cache)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=ModelReady, responses=MODEL_ERRORS,
            summary="Model readiness of one version", description=READY_DESCRIPTION)
async def model_version_ready(model_name: ModelName, model_version: ModelVersion, cache: ModelCacheDep) -> dict:
    return await _ready(f"{model_name}/{model_version}", cache)


INFER_DESCRIPTION = (
    f"One input, `{INPUT}`: FP32 (grayscale in [0, 1], the scale of /v1 predict's JSON `pixels`) or UINT8 (0-255), "
    "shape [N, 1, S, S] or [N, S, S] with S the model's image size. Outputs `probabilities` (FP32 [N, K], the "
    "probabilities of /v1 predict), `class_index` (INT64 [N]) and `label` (INT64 [N], the dataset's label). "
    f"Triton's binary tensor data extension: an input's parameters.binary_data_size and the {HEADER_LENGTH} header; "
    "an output's parameters.binary_data, or the request's parameters.binary_data_output for all. Requests share "
    "forward passes with /v1 predict's (CLASSCOMP_BATCH_MAX_SIZE, CLASSCOMP_BATCH_MAX_DELAY_MS)."
)


@router.post("/models/{model_name}/infer", response_model=InferenceResponse, responses=INFER_RESPONSES,
             summary="Inference", description=INFER_DESCRIPTION, openapi_extra=INFER_REQUEST_BODY)
async def infer(model_name: ModelName, request: Request, cache: ModelCacheDep) -> Response:
    return await _infer(model_name, request, cache)


@router.post("/models/{model_name}/versions/{model_version}/infer", response_model=InferenceResponse,
             responses=INFER_RESPONSES, summary="Inference on one version", description=INFER_DESCRIPTION,
             openapi_extra=INFER_REQUEST_BODY)
async def infer_version(model_name: ModelName, model_version: ModelVersion, request: Request,
                        cache: ModelCacheDep) -> Response:
    return await _infer(f"{model_name}/{model_version}", request, cache)

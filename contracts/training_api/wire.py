"""The protobuf messages of the tinker SDK's protocol (package `tinker_public`, proto3), and their conversion
to and from plain Python values.

The SDK sends `forward_backward` requests as protobuf and reads the results of `forward_backward` and `sample`
only as protobuf (docs/training-api-wire.md). The schema is declared here from the wire contract, field
numbers and types as the SDK writes them, and built at import with the protobuf runtime's descriptor pool:
no generated code and no protoc step. Only what ftaas reads or writes is declared; a field ftaas does not
declare is kept by the runtime as unknown and never read (an image chunk is declared so that it can be refused
by name).

Arrays travel as raw little-endian bytes; here they become `array.array` values (no numpy in contracts: the
API checks requests without it), which the worker turns into tensors.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from contracts.errors import InvalidRequest

PACKAGE = "tinker_public"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bytes": _F.TYPE_BYTES, "string": _F.TYPE_STRING, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
            "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT,
            "bool": _F.TYPE_BOOL}
_ENUMS = {"DType": [("DTYPE_UNSPECIFIED", 0), ("DTYPE_FLOAT32", 1), ("DTYPE_INT64", 2), ("DTYPE_INT32", 3),
                    ("DTYPE_BFLOAT16", 4)],
          "StopReason": [("STOP_REASON_STOP", 0), ("STOP_REASON_LENGTH", 1)]}
#: message -> fields (number, name, type, flags): type is a scalar, an enum or a message of the package, or
#: "map<K,V>"; flags: "repeated", "oneof:<name>" (one of a group), "optional" (proto3 explicit presence).
_MESSAGES: dict[str, list[tuple[int, str, str, str]]] = {
    "EncodedTextChunk": [(1, "tokens", "bytes", "")],
    "ImageChunk": [(1, "data", "bytes", ""), (2, "format", "string", "")],
    "DmelChunk": [(1, "dmel", "bytes", "")],
    "Chunk": [(1, "encoded_text", "EncodedTextChunk", "oneof:chunk"), (2, "image", "ImageChunk", "oneof:chunk"),
              (3, "dmel", "DmelChunk", "oneof:chunk")],
    "SparseCsr": [(1, "values", "bytes", ""), (2, "crow_indices", "bytes", ""), (3, "col_indices", "bytes", "")],
    "Tensor": [(1, "dense", "bytes", "oneof:encoding"), (2, "sparse_csr", "SparseCsr", "oneof:encoding"),
               (3, "dtype", "DType", ""), (4, "shape", "int64", "repeated")],
    "Datum": [(1, "model_input", "Chunk", "repeated"), (2, "loss_fn_inputs", "map<string,Tensor>", "")],
    "LossConfigValue": [(1, "number", "double", "oneof:value"), (2, "text", "string", "oneof:value")],
    "ForwardBackwardRequest": [(1, "model_id", "string", ""), (2, "seq_id", "int32", ""),
                               (3, "data", "Datum", "repeated"), (4, "loss_fn", "string", ""),
                               (5, "loss_fn_config", "map<string,double>", ""), (6, "forward_only", "bool", ""),
                               (7, "loss_fn_config_v2", "map<string,LossConfigValue>", "")],
    "BatchedTensor": [(1, "data", "bytes", ""), (2, "offsets", "bytes", ""), (3, "dtype", "DType", ""),
                      (4, "trailing_shape", "int64", "repeated")],
    "ArrayRecord": [(1, "type_tag", "string", ""), (2, "fields", "map<string,BatchedTensor>", ""),
                    (3, "num_datums", "int64", "")],
    "ForwardBackwardOutput": [(1, "loss_fn_output_type", "string", ""),
                              (2, "loss_fn_outputs", "ArrayRecord", "repeated"),
                              (3, "metrics", "map<string,double>", "")],
    "SampledSequence": [(1, "stop_reason", "StopReason", ""), (2, "tokens", "bytes", ""),
                        (3, "logprobs", "bytes", "optional")],
    "SampleResponse": [(1, "sequences", "SampledSequence", "repeated"), (2, "prompt_logprobs", "bytes", "optional"),
                       (4, "prompt_cache_hit_tokens", "int32", "")],
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="ftaas/tinker_public.proto", package=PACKAGE, syntax="proto3")
    for name, values in _ENUMS.items():
        enum = proto.enum_type.add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)

    def typed(target: Any, kind: str) -> None:
        if kind in _SCALARS:
            target.type = _SCALARS[kind]
        elif kind in _ENUMS:
            target.type, target.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{kind}"
        else:
            target.type, target.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"

    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        oneofs: dict[str, int] = {}
        for number, field_name, kind, flags in fields:
            entry = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind.startswith("map<"):
                key, value = kind[4:-1].split(",")
                nested = message.nested_type.add(name=f"{''.join(p.title() for p in field_name.split('_'))}Entry")
                nested.options.map_entry = True
                typed(nested.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL), key)
                typed(nested.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), value)
                entry.label, entry.type = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
                entry.type_name = f".{PACKAGE}.{name}.{nested.name}"
                continue
            typed(entry, kind)
            if flags == "repeated":
                entry.label = _F.LABEL_REPEATED
            elif flags.startswith("oneof:"):
                group = flags.removeprefix("oneof:")
                if group not in oneofs:
                    oneofs[group] = len(message.oneof_decl)
                    message.oneof_decl.add(name=group)
                entry.oneof_index = oneofs[group]
            elif flags == "optional":  # proto3 explicit presence: a synthetic one-field oneof
                entry.proto3_optional = True
                entry.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field_name}")
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in _MESSAGES}


def message(name: str) -> Any:
    """A new, empty message of the package (e.g. `message("ForwardBackwardRequest")`)."""
    return _CLASSES[name]()


# ------------------------------------------------------------------------------------------- arrays
#: DType -> (array typecode, item size); bf16 travels as 2-byte words, widened to float32 here.
_DTYPES = {1: ("f", 4), 2: ("q", 8), 3: ("i", 4), 4: ("H", 2)}
_NAMES = {1: "float32", 2: "int64", 3: "int32", 4: "bfloat16"}
_CODES = {"float32": 1, "int64": 2, "int32": 3}


def _array(data: bytes, dtype: int, *, what: str) -> array.array:
    if dtype not in _DTYPES:
        raise InvalidRequest(f"{what}: unsupported tensor dtype {dtype}", param=what)
    code, size = _DTYPES[dtype]
    if len(data) % size:
        raise InvalidRequest(f"{what}: {len(data)} bytes is not a whole number of {_NAMES[dtype]} values", param=what)
    values = array.array(code)
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    if dtype == 4:  # bf16: the high half of a float32
        widened = array.array("f")
        widened.frombytes(b"".join((word << 16).to_bytes(4, "little") for word in values))
        return widened
    return values


def _bytes(values: array.array) -> bytes:
    if sys.byteorder == "big":
        values = array.array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


@dataclass(frozen=True)
class TensorValue:
    """A decoded tensor: its values in row-major order and its shape."""

    values: array.array
    shape: tuple[int, ...]
    dtype: str


def decode_tensor(tensor: Any, *, what: str) -> TensorValue:
    """A `Tensor` message's values (dense, or a CSR matrix made dense), checked against its shape."""
    dtype = int(tensor.dtype)
    shape = tuple(int(s) for s in tensor.shape)
    if tensor.WhichOneof("encoding") == "sparse_csr":
        if len(shape) != 2:
            raise InvalidRequest(f"{what}: a sparse tensor must have two dimensions", param=what)
        csr = tensor.sparse_csr
        values = _array(csr.values, dtype, what=what)
        rows = _array(csr.crow_indices, 2, what=what)
        columns = _array(csr.col_indices, 2, what=what)
        if len(rows) != shape[0] + 1 or len(columns) != len(values) or (len(rows) and rows[-1] != len(values)):
            raise InvalidRequest(f"{what}: the sparse tensor's indices do not match its values", param=what)
        dense = array.array(values.typecode, bytes(values.itemsize * shape[0] * shape[1]))
        for row in range(shape[0]):
            for index in range(rows[row], rows[row + 1]):
                column = columns[index]
                if not 0 <= column < shape[1]:
                    raise InvalidRequest(f"{what}: a sparse column index is out of range", param=what)
                dense[row * shape[1] + column] = values[index]
        return TensorValue(dense, shape, _NAMES[dtype] if dtype != 4 else "float32")
    values = _array(tensor.dense, dtype, what=what)
    expected = 1
    for size in shape:
        expected *= size
    if shape and expected != len(values):
        raise InvalidRequest(f"{what}: shape {list(shape)} does not hold {len(values)} values", param=what)
    return TensorValue(values, shape or (len(values),), "float32" if dtype == 4 else _NAMES[dtype])


# ------------------------------------------------------------------------------------ forward_backward
@dataclass(frozen=True)
class DatumInput:
    """One datum: the token ids the model reads, and the loss function's inputs by name."""

    tokens: array.array
    loss_fn_inputs: dict[str, TensorValue]


@dataclass(frozen=True)
class ForwardBackwardBatch:
    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]
    forward_only: bool
    data: list[DatumInput] = field(default_factory=list)


def decode_forward_backward(body: bytes) -> ForwardBackwardBatch:
    """A `ForwardBackwardRequest` body. Anything that cannot be a token sequence or a tensor is an
    InvalidRequest naming the datum and input; image and audio chunks are refused by name (text models only)."""
    request = message("ForwardBackwardRequest")
    try:
        request.ParseFromString(body)
    except Exception as exc:  # noqa: BLE001 - the runtime's DecodeError and friends: the body is not this message
        raise InvalidRequest(f"the body is not a ForwardBackwardRequest protobuf: {exc}", param="body") from None
    config: dict[str, float | str] = {key: float(value) for key, value in request.loss_fn_config.items()}
    for key, value in request.loss_fn_config_v2.items():  # v2 wins where both are written (the SDK writes both)
        config[key] = value.text if value.WhichOneof("value") == "text" else float(value.number)
    data = []
    for index, datum in enumerate(request.data):
        tokens = array.array("i")
        for chunk in datum.model_input:
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise InvalidRequest(f"data.{index}.model_input: {kind or 'empty'} chunks are not supported: ftaas "
                                     "trains text models (encoded_text chunks only)", param=f"data.{index}.model_input")
            tokens.extend(_array(chunk.encoded_text.tokens, 3, what=f"data.{index}.model_input"))
        inputs = {name: decode_tensor(tensor, what=f"data.{index}.loss_fn_inputs.{name}")
                  for name, tensor in datum.loss_fn_inputs.items()}
        data.append(DatumInput(tokens, inputs))
    return ForwardBackwardBatch(request.model_id, int(request.seq_id), request.loss_fn, config,
                                bool(request.forward_only), data)


def encode_forward_backward_output(outputs: list[dict[str, TensorValue]], metrics: dict[str, float], *,
                                   output_type: str = "TorchLossReturn") -> bytes:
    """A `ForwardBackwardOutput`: one record holding every datum's outputs (each field's per-datum values
    concatenated, with byte offsets), and the metrics (keys `name:reduction`, as the SDK combines them)."""
    result = message("ForwardBackwardOutput")
    result.loss_fn_output_type = output_type
    for key, value in metrics.items():
        if key.count(":") != 1:
            raise ValueError(f"metric {key!r} must be named name:reduction")
        result.metrics[key] = float(value)
    record = result.loss_fn_outputs.add(type_tag=output_type, num_datums=len(outputs))
    for name in (outputs[0] if outputs else {}):
        first = outputs[0][name]
        batched = record.fields[name]
        batched.dtype = _CODES[first.dtype]
        batched.trailing_shape.extend(first.shape[1:])
        offsets, data = array.array("q", [0]), bytearray()
        for datum in outputs:
            data += _bytes(datum[name].values)
            offsets.append(len(data))
        batched.data, batched.offsets = bytes(data), _bytes(offsets)
    return result.SerializeToString()


# ---------------------------------------------------------------------------------------------- sample
@dataclass(frozen=True)
class SampledSequence:
    tokens: list[int]
    #: each sampled token's log probability, where asked for
    logprobs: list[float] | None
    #: "stop" (a stop sequence or end of turn) or "length" (max_tokens)
    stop_reason: str


def encode_sample_response(sequences: list[SampledSequence], *,
                           prompt_logprobs: list[float | None] | None = None) -> bytes:
    """A `SampleResponse`: each sequence's tokens (int32), log probabilities (float32) and stop reason; the
    prompt's log probabilities where asked for (None, the first token's, travels as NaN)."""
    response = message("SampleResponse")
    for sequence in sequences:
        item = response.sequences.add(stop_reason=1 if sequence.stop_reason == "length" else 0,
                                      tokens=_bytes(array.array("i", sequence.tokens)))
        if sequence.logprobs is not None:
            item.logprobs = _bytes(array.array("f", sequence.logprobs))
    if prompt_logprobs is not None:
        response.prompt_logprobs = _bytes(array.array("f", [float("nan") if v is None else v for v in prompt_logprobs]))
    return response.SerializeToString()

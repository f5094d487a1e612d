"""The training API's protobuf wire, checked against the official tinker SDK's own encoders and decoders: what
the SDK writes, ftaas reads (tokens, every loss input, dense and sparse, the loss configuration); what ftaas
writes, the SDK reads back (per-datum outputs and metrics, sampled sequences with their log probabilities)."""

from __future__ import annotations

import math

import pytest
import tinker
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response

from contracts.errors import InvalidRequest
from contracts.training_api import wire


def sdk_request(data: list[types.Datum], loss_fn: str = "cross_entropy", config: dict | None = None) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss_fn, loss_fn_config=config),
        model_id="sess-1:train:0", seq_id=3)
    return forward_backward_request_to_proto(request).SerializeToString()


def test_what_the_sdk_sends_for_forward_backward_is_read_exactly() -> None:
    assert tinker.__version__ == "0.38.0"
    first = types.Datum(model_input=types.ModelInput.from_ints([5, 6, 7, 8]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=[6, 7, 8, 9], dtype="int64", shape=[4]),
                                        "weights": types.TensorData(data=[0.0, 1.0, 1.0, 0.5], dtype="float32", shape=[4])})
    second = types.Datum(model_input=types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]),
                                                              types.EncodedTextChunk(tokens=[3])]),
                         loss_fn_inputs={"target_tokens": types.TensorData(data=[2, 3, 4], dtype="int64", shape=[3]),
                                         "advantages": types.TensorData(data=[-1.5, 0.25, 2.0], dtype="float32", shape=[3]),
                                         "logprobs": types.TensorData(data=[-0.1, -2.0, -30.0], dtype="float32", shape=[3])})
    batch = wire.decode_forward_backward(sdk_request([first, second], "ppo",
                                                     {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2, "tag": "x"}))
    assert (batch.model_id, batch.seq_id, batch.loss_fn, batch.forward_only) == ("sess-1:train:0", 3, "ppo", False)
    assert batch.loss_fn_config == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2, "tag": "x"}
    assert [list(d.tokens) for d in batch.data] == [[5, 6, 7, 8], [1, 2, 3]]  # chunks joined
    assert list(batch.data[0].loss_fn_inputs["target_tokens"].values) == [6, 7, 8, 9]
    assert batch.data[0].loss_fn_inputs["target_tokens"].dtype == "int64"
    assert list(batch.data[0].loss_fn_inputs["weights"].values) == [0.0, 1.0, 1.0, 0.5]
    assert [round(v, 6) for v in batch.data[1].loss_fn_inputs["advantages"].values] == [-1.5, 0.25, 2.0]
    assert batch.data[1].loss_fn_inputs["logprobs"].shape == (3,)


def test_two_dimensional_inputs_the_sdk_sends_sparse_are_made_dense() -> None:
    import torch

    targets = torch.tensor([[3, 0, 0], [0, 0, 9]])  # 2-D torch inputs are sent as CSR (pad value 0)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                        loss_fn_inputs={"target_tokens": types.TensorData.from_torch(targets),
                                        "weights": types.TensorData.from_torch(weights)})
    got = wire.decode_forward_backward(sdk_request([datum])).data[0].loss_fn_inputs
    assert got["target_tokens"].shape == (2, 3) and list(got["target_tokens"].values) == [3, 0, 0, 0, 0, 9]
    assert list(got["weights"].values) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]


def test_bodies_that_are_not_the_message_or_carry_images_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="not a ForwardBackwardRequest"):
        wire.decode_forward_backward(b"\xff\xff\xff")
    image = types.Datum(model_input=types.ModelInput(chunks=[types.ImageChunk(data=b"\x89PNG", format="png",
                                                                              expected_tokens=4)]),
                        loss_fn_inputs={})
    with pytest.raises(InvalidRequest, match="image chunks are not supported") as refused:
        wire.decode_forward_backward(sdk_request([image]))
    assert refused.value.param == "data.0.model_input"
    bad = wire.message("ForwardBackwardRequest")
    tensor = bad.data.add().loss_fn_inputs["weights"]
    tensor.dense, tensor.dtype = b"\x00" * 6, 1  # 6 bytes: not a whole number of float32 values
    with pytest.raises(InvalidRequest, match="not a whole number") as refused:
        wire.decode_forward_backward(bad.SerializeToString())
    assert refused.value.param == "data.0.loss_fn_inputs.weights"


def test_forward_backward_outputs_and_samples_ftaas_writes_are_what_the_sdk_reads() -> None:
    import array

    outputs = [{"logprobs": wire.TensorValue(array.array("f", [-0.5, -1.25, -3.0]), (3,), "float32")},
               {"logprobs": wire.TensorValue(array.array("f", [-0.125]), (1,), "float32")}]
    read = deserialize_forward_backward_output(wire.encode_forward_backward_output(outputs, {"loss:sum": 4.875}))
    assert read.metrics == {"loss:sum": 4.875} and read.loss_fn_output_type == "TorchLossReturn"
    assert [o["logprobs"].tolist() for o in read.loss_fn_outputs] == [[-0.5, -1.25, -3.0], [-0.125]]
    with pytest.raises(ValueError, match="name:reduction"):
        wire.encode_forward_backward_output(outputs, {"loss": 1.0})

    sequences = [wire.SampledSequence([11, 12, 13], [-0.5, -0.25, -2.0], "length"),
                 wire.SampledSequence([14], None, "stop")]
    sample = deserialize_sample_response(wire.encode_sample_response(sequences, prompt_logprobs=[None, -1.5, -0.75]))
    assert [s.tokens for s in sample.sequences] == [[11, 12, 13], [14]]
    assert [s.stop_reason for s in sample.sequences] == ["length", "stop"]
    assert sample.sequences[0].logprobs == [-0.5, -0.25, -2.0] and sample.sequences[1].logprobs is None
    assert sample.prompt_logprobs[0] is None or math.isnan(sample.prompt_logprobs[0])
    assert sample.prompt_logprobs[1:] == [-1.5, -0.75]

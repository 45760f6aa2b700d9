"""The engine model's request and config parsing (the parts that run without an engine)."""

import pytest

from services.inference.triton_models.engine import InvalidRequest, engine_settings, parse_value, sampling_kwargs


def test_engine_arguments_come_from_engine_dot_parameters():
    kwargs, kv_gib = engine_settings(
        {
            "model_dir": "x",
            "engine.dtype": "float32",
            "engine.max_model_len": "2048",
            "engine.enforce_eager": "true",
            "engine.gpu_memory_utilization": "0.85",
            "cpu_kv_cache_gib": "2",
        }
    )
    assert kwargs == {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True, "gpu_memory_utilization": 0.85}
    assert kv_gib == 2
    assert engine_settings({})[1] is None
    assert parse_value('{"a": 1}') == {"a": 1} and parse_value("bfloat16") == "bfloat16"


def test_sampling_parameters_map_to_vllm_and_always_ask_for_the_sampled_logprob():
    kwargs = sampling_kwargs({"max_tokens": 5, "temperature": 0, "stop": ["\n"], "logit_bias": {"7": -100}})
    assert kwargs == {"max_tokens": 5, "temperature": 0, "stop": ["\n"], "logit_bias": {7: -100.0}, "logprobs": 0}
    assert sampling_kwargs({"logprobs": 3, "prompt_logprobs": True})["prompt_logprobs"] == 0
    assert sampling_kwargs({"structured_output": {"json": {"type": "object"}}})["structured_outputs"] == {
        "json": {"type": "object"}
    }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ([1, 2], "JSON object"),
        ({"beam_width": 4}, "unsupported parameter(s): beam_width"),
        ({"logprobs": 21}, "logprobs must be an integer from 0 to 20"),
        ({"logprobs": True}, "logprobs must be an integer"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"structured_output": {"json": {}, "regex": "a"}}, "exactly one of"),
        ({"structured_output": {"xml": "<a/>"}}, "exactly one of"),
    ],
)
def test_invalid_parameters_are_refused_by_name(params, says):
    with pytest.raises(InvalidRequest, match=says.replace("(", r"\(").replace(")", r"\)")):
        sampling_kwargs(params)

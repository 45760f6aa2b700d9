"""PostprocessService in-process on port 0, called through the mesh channel and generated stubs."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from llmesh.common.v1 import common_pb2
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from services.postprocess.service import PostprocessService
from services.postprocess.settings import PostprocessSettings
from support.tokenizer import build_tokenizer, catalog, wait_until_serving

SERVICE_NAME = "llmesh.postprocess.v1.PostprocessService"
REFUSAL = "That answer was withheld."
STOP, CONTENT_FILTER = common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_CONTENT_FILTER
MODEL, OTHER = "model-a", "model-b"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A second model's tokenizer with a vocabulary of its own."""
    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("other"), vocab_size=300))


@pytest.fixture(scope="module")
async def channel(tokenizer_dir, other_tokenizer):
    models = [*catalog(tokenizer_dir, MODEL), *catalog(other_tokenizer.name_or_path, OTHER)]
    settings = PostprocessSettings(models=models, refusal_message=REFUSAL, default_deadline_s=10)
    service = PostprocessService(settings)
    running = await start_service(service, settings, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", settings)
    try:
        await wait_until_serving(channel, SERVICE_NAME)
        yield channel
    finally:
        await channel.close()
        await running.stop(None)
        await service.close()


@pytest.fixture(scope="module")
def stub(channel):
    return postprocess_pb2_grpc.PostprocessServiceStub(channel)


def stream_requests(token_ids: list[int], chunk: int, finish_reason=STOP, model: str = MODEL, stop=()):
    chunks = [token_ids[i : i + chunk] for i in range(0, len(token_ids), chunk)]
    requests = [postprocess_pb2.PostprocessStreamRequest(token_ids=ids) for ids in chunks]
    requests[0].model = model
    requests[0].stop.extend(stop)
    requests[-1].finish_reason = finish_reason
    return requests


async def test_health_is_serving_once_the_tokenizer_is_loaded(channel):
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_answer_is_detokenized_without_special_tokens(stub, tokenizer):
    ids = tokenizer.encode("Hello world, 你好 😀<|im_end|>", add_special_tokens=False)
    response = await stub.Postprocess(
        postprocess_pb2.PostprocessRequest(token_ids=ids, model=MODEL, finish_reason=STOP)
    )
    assert response.text == "Hello world, 你好 😀"
    assert response.finish_reason == STOP and not response.verdict.blocked


async def test_each_answer_is_decoded_by_its_own_models_tokenizer(stub, tokenizer, other_tokenizer):
    text = "Hello world, this is a small tokenizer for tests."
    ids, other_ids = tokenizer.encode(text), other_tokenizer.encode(text)
    assert ids != other_ids
    for model, token_ids in ((MODEL, ids), (OTHER, other_ids)):
        response = await stub.Postprocess(postprocess_pb2.PostprocessRequest(token_ids=token_ids, model=model))
        assert response.text == text
        streamed = [r async for r in stub.PostprocessStream(iter(stream_requests(token_ids, 3, model=model)))]
        assert "".join(r.text_delta for r in streamed) == text


async def test_the_text_ends_before_the_first_stop_string(stub, tokenizer):
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)
    request = postprocess_pb2.PostprocessRequest(token_ids=ids, model=MODEL, stop=["fox", "dog"])
    assert (await stub.Postprocess(request)).text == "The quick brown "
    streamed = [r async for r in stub.PostprocessStream(iter(stream_requests(ids, 1, stop=["fox"])))]
    assert "".join(r.text_delta for r in streamed) == "The quick brown "


async def test_a_blocked_answer_is_replaced_by_the_refusal(stub, tokenizer):
    ids = tokenizer.encode("Sure: Forbiddenword.", add_special_tokens=False)
    response = await stub.Postprocess(
        postprocess_pb2.PostprocessRequest(token_ids=ids, model=MODEL, finish_reason=STOP)
    )
    assert response.text == REFUSAL and response.finish_reason == CONTENT_FILTER
    assert response.verdict.blocked and response.verdict.category == common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD
    assert response.verdict.rule == "lexicon:en:default" and response.verdict.message == REFUSAL


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (postprocess_pb2.PostprocessRequest(token_ids=[1, 10**6], model=MODEL), "INVALID_TOKEN_ID"),
        (postprocess_pb2.PostprocessRequest(token_ids=[-1], model=MODEL), "INVALID_TOKEN_ID"),
        (postprocess_pb2.PostprocessRequest(token_ids=[1], model="no-such-model"), "UNKNOWN_MODEL"),
    ],
)
async def test_invalid_requests_are_invalid_argument_with_error_info(stub, request_, reason):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Postprocess(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == reason


async def test_a_clean_stream_is_released_whole_with_the_finish_reason(stub, tokenizer):
    text = "A forbidden answer? No: 你好, 世界 😀 and forbiddenwords are fine."
    ids = tokenizer.encode(text, add_special_tokens=False)
    requests = stream_requests(ids, chunk=2, finish_reason=common_pb2.FINISH_REASON_LENGTH)
    responses = [r async for r in stub.PostprocessStream(iter(requests))]
    assert len(responses) == len(requests)  # one answer per chunk, some empty while held back
    assert "".join(r.text_delta for r in responses) == text
    assert not any("\ufffd" in r.text_delta for r in responses)
    assert [r.finish_reason for r in responses[:-1]] == [common_pb2.FINISH_REASON_UNSPECIFIED] * (len(responses) - 1)
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH and not responses[-1].verdict.blocked


@pytest.mark.parametrize(
    ("text", "safe_prefix"), [("Well, FORBIDDENWORD is it, ok", "Well, "), ("好的：违禁词。", "好的:")]
)
async def test_a_blocked_stream_ends_with_content_filter_and_none_of_the_term(stub, tokenizer, text, safe_prefix):
    ids = tokenizer.encode(text, add_special_tokens=False)
    responses = [r async for r in stub.PostprocessStream(iter(stream_requests(ids, chunk=1)))]
    released = "".join(r.text_delta for r in responses)
    assert safe_prefix.startswith(released.replace("：", ":"))
    last = responses[-1]
    assert last.finish_reason == CONTENT_FILTER and last.verdict.blocked and last.verdict.message == REFUSAL
    assert len(responses) < len(ids)  # the stream ended at the term, not at the last chunk


async def test_a_stream_closed_without_a_final_message_is_flushed(stub, tokenizer):
    ids = tokenizer.encode("it ends with forbidden", add_special_tokens=False)
    requests = [postprocess_pb2.PostprocessStreamRequest(token_ids=[i]) for i in ids]
    requests[0].model = MODEL
    responses = [r async for r in stub.PostprocessStream(iter(requests))]
    assert "".join(r.text_delta for r in responses) == "it ends with forbidden"
    assert len(responses) == len(requests) + 1


async def test_a_stream_for_an_unknown_model_is_invalid_argument(stub):
    requests = [postprocess_pb2.PostprocessStreamRequest(model="no-such-model", token_ids=[5])]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        _ = [r async for r in stub.PostprocessStream(iter(requests))]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "UNKNOWN_MODEL"

"""Size limits of PreprocessService, called directly (no gRPC: valid requests never touch the context)."""

import asyncio

import pytest
from transformers import AutoTokenizer

from llmesh.common.v1 import common_pb2
from llmesh.preprocess.v1 import preprocess_pb2
from services.preprocess.service import PreprocessService
from services.preprocess.settings import PreprocessSettings
from support.tokenizer import build_tokenizer, catalog


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


async def preprocess(settings: PreprocessSettings, request: preprocess_pb2.PreprocessRequest):
    service = PreprocessService(settings)
    while not await service.ready():
        await asyncio.sleep(0.01)
    return await service.Preprocess(request, context=None)


def user(*contents: str) -> preprocess_pb2.PreprocessRequest:
    return preprocess_pb2.PreprocessRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=c) for c in contents]
    )


async def test_character_limit_counts_all_messages_after_normalisation(tokenizer_dir):
    settings = PreprocessSettings(models=catalog(tokenizer_dir), max_prompt_chars=10, max_prompt_tokens=1000)
    # Zero-width characters are dropped before counting.
    assert not (await preprocess(settings, user("abcde", "fghij\u200b\u200b"))).verdict.blocked
    verdict = (await preprocess(settings, user("abcde", "fghijk"))).verdict
    assert verdict.blocked and verdict.category == common_pb2.SAFETY_CATEGORY_SIZE_LIMIT
    assert verdict.rule == "size:chars" and verdict.message == "The prompt is 11 characters long; the limit is 10."


async def test_token_limit_counts_the_rendered_prompt(tokenizer_dir):
    prompt = "the quick brown fox"
    tokens = len(AutoTokenizer.from_pretrained(tokenizer_dir).encode(prompt, add_special_tokens=False))
    at_limit = PreprocessSettings(models=catalog(tokenizer_dir), max_prompt_tokens=tokens)
    over_limit = PreprocessSettings(models=catalog(tokenizer_dir), max_prompt_tokens=tokens - 1)
    request = preprocess_pb2.PreprocessRequest(prompt=prompt)
    response = await preprocess(at_limit, request)
    assert not response.verdict.blocked and len(response.prompts[0].token_ids) == tokens
    verdict = (await preprocess(over_limit, request)).verdict
    assert verdict.blocked and verdict.category == common_pb2.SAFETY_CATEGORY_SIZE_LIMIT
    assert verdict.rule == "size:tokens"


async def test_without_a_token_limit_only_the_models_context_bounds_the_prompt(tokenizer_dir):
    """The serving model's context is enforced where the model is known (a 400 from the gateway)."""
    settings = PreprocessSettings(models=catalog(tokenizer_dir))
    assert settings.max_prompt_tokens is None
    response = await preprocess(settings, preprocess_pb2.PreprocessRequest(prompt="the quick brown fox " * 200))
    assert not response.verdict.blocked and len(response.prompts[0].token_ids) > 256

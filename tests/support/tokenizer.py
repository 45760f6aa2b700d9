"""Test support: a small ChatML byte-level BPE tokenizer, shaped like the trained models' one
(see ARCHITECTURE.md), so tests need no trained model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a small tokenizer for tests.",
    "A user asks a question and the assistant gives a helpful answer.",
    "Services talk to each other over gRPC with deadlines and retries.",
    "The router picks the cheapest model that will answer the prompt well.",
    "Text is normalised, checked for blocked words and tokenized before inference.",
    "Streaming output is held back until no blocked word could still be completed.",
    "Numbers like 1, 2, 3 and 42 appear in answers, and so do names and places.",
]


def build_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """Train on a few hundred words of English and save to ``directory``. The vocabulary is so
    small that non-Latin characters stay split into byte tokens, as rare ones are in any
    byte-level BPE."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_SENTENCES * 10, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=IM_END,
        pad_token=EOT,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    ).save_pretrained(directory, save_jinja_files=False)
    return directory


async def wait_until_serving(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 15.0) -> None:
    """Poll grpc.health.v1 until ``service`` reports SERVING (the tokenizer loads after start)."""
    stub = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(timeout_s):
        while True:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.05)


def catalog(directory: Path, *names: str, context_length: int = 256) -> list:
    """Catalog entries for models that all use the tokenizer in ``directory``."""
    from mesh.catalog import ModelSpec

    return [
        ModelSpec(
            name=name, hf_dir=directory, price_input_per_1k=0.0, price_output_per_1k=0.0, context_length=context_length
        )
        for name in names or ("test-model",)
    ]

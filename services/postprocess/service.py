"""PostprocessService: detokenize and moderate answers, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from transformers import PreTrainedTokenizerBase

from llmesh.common.v1 import common_pb2
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from mesh.errors import abort
from services.postprocess.settings import PostprocessSettings
from services.postprocess.stream import ModeratedDecoder, StopStrings
from services.safety import pii, scanners, verdicts
from services.safety.lexicon import ReloadingLexicon
from textkit.tokenizers import ModelTokenizers

# Released text the moderation classifier sees when a sentence ends: the sentence and some context.
MODERATION_WINDOW_CHARS = 400
_SENTENCE_ENDS = frozenset(".!?\n。！？")


def _ends_sentence(delta: str, final: bool) -> bool:
    return final or any(char in _SENTENCE_ENDS for char in delta)


class PostprocessService(postprocess_pb2_grpc.PostprocessServiceServicer):
    service_names = [postprocess_pb2.DESCRIPTOR.services_by_name["PostprocessService"].full_name]

    def __init__(self, settings: PostprocessSettings) -> None:
        self.settings = settings
        self.tokenizers = ModelTokenizers(settings.models)
        self.lexicon = ReloadingLexicon(en=settings.output_lexicon_en, zh=settings.output_lexicon_zh)
        self.scanners: list[verdicts.Scanner] = [verdicts.LexiconScanner(self.lexicon, settings.refusal_message)]
        self.moderation: scanners.ModerationScanner | None = None
        if settings.output_moderation_threshold <= 1:
            self.moderation = scanners.ModerationScanner(settings.refusal_message, settings.output_moderation_threshold)
            self.scanners.append(self.moderation)
        if settings.output_pii_action == "block":
            self.scanners.append(scanners.PiiScanner(settings.refusal_message))

    def register(self, server: grpc.aio.Server) -> None:
        postprocess_pb2_grpc.add_PostprocessServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return await self.tokenizers.ready()

    async def close(self) -> None:
        self.tokenizers.close()

    async def Postprocess(
        self, request: postprocess_pb2.PostprocessRequest, context
    ) -> postprocess_pb2.PostprocessResponse:
        tokenizer = await self._tokenizer(request.model, context)
        await check_token_ids(request.token_ids, tokenizer, context)
        text = StopStrings(request.stop).push(tokenizer.decode(request.token_ids, skip_special_tokens=True), final=True)
        verdict = verdicts.first_verdict(self.scanners, [text])
        if verdict is not None:
            verdicts.record(verdict)
            return postprocess_pb2.PostprocessResponse(
                text=self.settings.refusal_message,
                verdict=verdict,
                finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER,
            )
        passed = verdicts.PASSED
        found = pii.find_pii(text) if self.settings.output_pii_action == "redact" else []
        if found:
            text, passed = pii.redact(text, found), scanners.redaction_verdict(found)
        verdicts.record(passed)
        return postprocess_pb2.PostprocessResponse(text=text, verdict=passed, finish_reason=request.finish_reason)

    async def PostprocessStream(
        self, requests: AsyncIterator[postprocess_pb2.PostprocessStreamRequest], context
    ) -> AsyncIterator[postprocess_pb2.PostprocessStreamResponse]:
        # One response per request (its text may be empty while held back), so a caller can
        # pair them; the last one carries the finish reason and the verdict.
        decoder = None
        async for request in requests:
            if decoder is None:
                tokenizer = await self._tokenizer(request.model, context)
                decoder = ModeratedDecoder(
                    tokenizer, self.lexicon.current(), self.settings.output_pii_action, stop=request.stop
                )
                released = ""
            await check_token_ids(request.token_ids, tokenizer, context)
            final = request.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
            response = self._step(decoder, request.token_ids, final, request.finish_reason)
            released = (released + response.text_delta)[-MODERATION_WINDOW_CHARS:]
            if self.moderation is not None and _ends_sentence(response.text_delta, final):
                # The classifier judges sentences, so it runs when one ends. Unlike the lexicon
                # and PII hold-back it cannot stop text already released; it ends the answer.
                verdict = self.moderation.scan(released)
                if verdict is not None:
                    verdicts.record(verdict)
                    response = postprocess_pb2.PostprocessStreamResponse(
                        finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER, verdict=verdict
                    )
            yield response
            if final:
                return
            if response.verdict.blocked:
                # Read the caller's remaining messages until it closes its side: ending the call
                # while the caller is still writing makes gRPC fail it ("Internal error from
                # Core") instead of completing it with the verdict.
                async for _ in requests:
                    pass
                return
        if decoder is not None:
            # The caller closed its side without a final message: the answer ended all the
            # same, so release (or block) what is still held back.
            yield self._step(decoder, [], True, common_pb2.FINISH_REASON_UNSPECIFIED)

    async def _tokenizer(self, model: str, context) -> PreTrainedTokenizerBase:
        """The tokenizer of the model that wrote the tokens, or the call aborted."""
        if model not in self.tokenizers.models:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown model {model!r}", "UNKNOWN_MODEL", model=model
            )
        tokenizer = self.tokenizers.get(model)
        if tokenizer is None:
            # UNAVAILABLE: the channel's retry policy tries again, which is right while starting.
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"tokenizer of {model} not loaded yet", "TOKENIZER_NOT_READY")
        return tokenizer

    def _step(
        self, decoder: ModeratedDecoder, token_ids: Sequence[int], final: bool, finish_reason: common_pb2.FinishReason
    ) -> postprocess_pb2.PostprocessStreamResponse:
        text, match = decoder.push(token_ids, final)
        if match is not None:
            if isinstance(match, list):
                verdict = verdicts.blocked(
                    common_pb2.SAFETY_CATEGORY_PII, scanners.pii_rule(match), self.settings.refusal_message
                )
            else:
                verdict = verdicts.lexicon_verdict(match, self.settings.refusal_message)
            verdicts.record(verdict)
            return postprocess_pb2.PostprocessStreamResponse(
                finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER, verdict=verdict
            )
        if not final:
            return postprocess_pb2.PostprocessStreamResponse(text_delta=text)
        redacted = decoder.buffer.redacted
        passed = scanners.redaction_verdict(redacted) if redacted else verdicts.PASSED
        verdicts.record(passed)
        return postprocess_pb2.PostprocessStreamResponse(text_delta=text, finish_reason=finish_reason, verdict=passed)


async def check_token_ids(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, context) -> None:
    vocab_size = len(tokenizer)
    bad = next((token_id for token_id in token_ids if not 0 <= token_id < vocab_size), None)
    if bad is not None:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"token id {bad} is outside the vocabulary (size {vocab_size})",
            "INVALID_TOKEN_ID",
            token_id=str(bad),
        )

"""PostprocessService: detokenize and moderate answers, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from transformers import PreTrainedTokenizerBase

from llmesh.common.v1 import common_pb2
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from mesh.errors import abort
from services.postprocess.logprobs import LogprobAligner, Span
from services.postprocess.settings import PostprocessSettings
from services.postprocess.stream import IncrementalDetokenizer, ModeratedDecoder, StopStrings, detokenize_each
from textkit.safety import pii, scanners, verdicts
from textkit.safety.lexicon import ReloadingLexicon
from textkit.tokenizers import ModelTokenizers, TokenBytes, decode_text

# Released text the moderation classifier sees when a sentence ends: the sentence and some context.
MODERATION_WINDOW_CHARS = 400
_SENTENCE_ENDS = frozenset(".!?\n。！？")


def _ends_sentence(delta: str, final: bool) -> bool:
    return final or any(char in _SENTENCE_ENDS for char in delta)


class _Answer:
    """One of a stream's answers: its decoder and the released text the classifier judges."""

    def __init__(self, decoder: ModeratedDecoder) -> None:
        self.decoder = decoder
        self.released = ""
        self.finished = False


class PostprocessService(postprocess_pb2_grpc.PostprocessServiceServicer):
    service_names: Sequence[str] = (postprocess_pb2.DESCRIPTOR.services_by_name["PostprocessService"].full_name,)

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
        stops = StopStrings(request.stop)
        aligner = None
        if request.logprobs:
            # The text comes from the same per-token decoding the entries are aligned to.
            aligner = LogprobAligner(TokenBytes(tokenizer), self.lexicon.current())
            raw = detokenize_each(
                IncrementalDetokenizer(tokenizer),
                aligner,
                request.token_ids,
                request.token_logprobs,
                request.top_logprobs,
                final=True,
            )
        else:
            raw = decode_text(tokenizer, request.token_ids, skip_special_tokens=True)
        text = stops.push(raw, final=True)
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
        entries = []
        if aligner is not None:
            spans = [Span(match.start, match.end, pii.placeholder(match.kind)) for match in found]
            entries = aligner.release(len(text), spans, final=True)
        if found:
            text, passed = pii.redact(text, found), scanners.redaction_verdict(found)
        verdicts.record(passed)
        return postprocess_pb2.PostprocessResponse(
            text=text,
            verdict=passed,
            finish_reason=request.finish_reason,
            logprobs=entries,
            stop_sequence=stops.matched,
        )

    async def PostprocessStream(
        self, requests: AsyncIterator[postprocess_pb2.PostprocessStreamRequest], context
    ) -> AsyncIterator[postprocess_pb2.PostprocessStreamResponse]:
        # One response per request (its text may be empty while held back), so a caller can
        # pair them; an answer's last one carries its finish reason and verdict. The call ends
        # once every answer has ended.
        answers: dict[int, _Answer] = {}
        expected = 1
        tokenizer: PreTrainedTokenizerBase | None = None
        first: postprocess_pb2.PostprocessStreamRequest | None = None
        async for request in requests:
            if first is None or tokenizer is None:  # the first request (both are set together)
                first = request
                expected = max(request.answers, 1)
                tokenizer = await self._tokenizer(request.model, context)
            if request.index >= expected:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"answer index {request.index} of {expected} answers",
                    "BAD_ANSWER_INDEX",
                )
            answer = answers.get(request.index)
            if answer is None:
                answer = answers[request.index] = _Answer(
                    ModeratedDecoder(
                        tokenizer,
                        self.lexicon.current(),
                        self.settings.output_pii_action,
                        stop=first.stop,
                        logprobs=first.logprobs,
                    )
                )
            if answer.finished:
                continue  # blocked already: the rest of its tokens are never decoded
            await check_token_ids(request.token_ids, tokenizer, context)
            final = request.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
            yield self._answer_step(answer, request, final, request.finish_reason)
            if len(answers) == expected and all(a.finished for a in answers.values()):
                # Read the caller's remaining messages until it closes its side: ending the call
                # while the caller is still writing makes gRPC fail it ("Internal error from
                # Core") instead of completing it.
                async for _ in requests:
                    pass
                return
        # The caller closed its side without every final message: those answers ended all the
        # same, so release (or block) what is still held back.
        for index, answer in sorted(answers.items()):
            if not answer.finished:
                empty = postprocess_pb2.PostprocessStreamRequest(index=index)
                yield self._answer_step(answer, empty, True, common_pb2.FINISH_REASON_UNSPECIFIED)

    def _answer_step(
        self,
        answer: _Answer,
        request: postprocess_pb2.PostprocessStreamRequest,
        final: bool,
        finish_reason: common_pb2.FinishReason,
    ) -> postprocess_pb2.PostprocessStreamResponse:
        response = self._step(answer.decoder, request, final, finish_reason)
        response.index = request.index
        answer.released = (answer.released + response.text_delta)[-MODERATION_WINDOW_CHARS:]
        if self.moderation is not None and not response.verdict.blocked and _ends_sentence(response.text_delta, final):
            # The classifier judges sentences, so it runs when one ends. Unlike the lexicon
            # and PII hold-back it cannot stop text already released; it ends the answer.
            verdict = self.moderation.scan(answer.released)
            if verdict is not None:
                verdicts.record(verdict)
                response = postprocess_pb2.PostprocessStreamResponse(
                    index=request.index, finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER, verdict=verdict
                )
        answer.finished = bool(response.finish_reason)
        return response

    async def _tokenizer(self, model: str, context) -> PreTrainedTokenizerBase:
        """The tokenizer of the model that wrote the tokens, or the call aborted."""
        if model not in self.tokenizers.models:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown model {model!r}", "UNKNOWN_MODEL", model=model
            )
        tokenizer = self.tokenizers.get(model)
        if tokenizer is None:
            # UNAVAILABLE: the channel's retry policy tries again, which is right while starting.
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, f"tokenizer of {model} not loaded yet", "TOKENIZER_NOT_READY"
            )
        return tokenizer

    def _step(
        self,
        decoder: ModeratedDecoder,
        request: postprocess_pb2.PostprocessStreamRequest,
        final: bool,
        finish_reason: common_pb2.FinishReason,
    ) -> postprocess_pb2.PostprocessStreamResponse:
        text, match, entries = decoder.push_with_logprobs(
            request.token_ids, request.token_logprobs, request.top_logprobs, final
        )
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
            return postprocess_pb2.PostprocessStreamResponse(text_delta=text, logprobs=entries)
        redacted = decoder.buffer.redacted
        passed = scanners.redaction_verdict(redacted) if redacted else verdicts.PASSED
        verdicts.record(passed)
        return postprocess_pb2.PostprocessStreamResponse(
            text_delta=text,
            logprobs=entries,
            finish_reason=finish_reason,
            verdict=passed,
            stop_sequence=decoder.stops.matched,
        )


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

"""The shared byte-level BPE tokenizer (GPT-2 style) with the ChatML chat template.

The merges are learned here in plain Python rather than with `tokenizers.trainers.BpeTrainer`:
that trainer breaks ties between equally frequent pairs in hash-map order, which changes from
one process to the next, so the same corpus gave a different vocabulary on every run. Ties here
are broken by the pair's text, so the tokenizer is a pure function of the corpus. Encoding and
decoding still use the fast `tokenizers` BPE model.
"""

from __future__ import annotations

import heapq
from collections import Counter
from itertools import pairwise

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MIN_PAIR_COUNT = 2  # a merge seen once only memorises a word


def _pairs(word: tuple[str, ...]) -> Counter:
    return Counter(pairwise(word))


def _merge(word: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(texts: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Classic BPE over pre-tokenized words, updating only the words a merge touches."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    word_freq = Counter(piece for text in texts for piece, _ in pre.pre_tokenize_str(text))
    words = [tuple(w) for w in sorted(word_freq)]
    freqs = [word_freq[w] for w in sorted(word_freq)]

    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, word in enumerate(words):
        for pair, n in _pairs(word).items():
            pair_count[pair] += n * freqs[i]
            where.setdefault(pair, set()).add(i)
    # Max-heap on count, then the smallest pair text: deterministic tie-breaking.
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    merged: set[tuple[str, str]] = set()
    while heap and len(merges) < n_merges:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_count.get(pair, 0):  # stale entry; a fresher one is in the heap
            continue
        if -neg < MIN_PAIR_COUNT:
            break
        # A pair can come back (x+yz merged, then y+z creates new yz next to x): merge those
        # words again, but a merge rule exists only once.
        if pair not in merged:
            merges.append(pair)
            merged.add(pair)
        changed = set()
        for i in sorted(where.pop(pair)):
            old = words[i]
            new = _merge(old, *pair)
            if new == old:
                continue
            for p, n in _pairs(old).items():
                pair_count[p] -= n * freqs[i]
                changed.add(p)
            for p, n in _pairs(new).items():
                pair_count[p] += n * freqs[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
            words[i] = new
        for p in sorted(changed):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


def train_tokenizer(texts: list[str], vocab_size: int, context: int) -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # all 256 bytes: nothing is <unk>
    merges = learn_merges(texts, vocab_size - len(SPECIAL_TOKENS) - len(alphabet))
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + alphabet + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))  # two merges may spell the same token

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)  # never split, and matched before BPE runs
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=IM_END,  # a chat turn ends here; generation_config also stops at EOT
        pad_token=EOT,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
        model_max_length=context,
    )

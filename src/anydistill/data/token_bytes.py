"""The UTF-8 bytes each token id stands for, and byte spans of tokenised text: the coordinates in
which cross-tokenizer distillation lines up two tokenisations of one text.

Bytes, not characters: a byte-level BPE may split one character into several tokens (``é`` is
``Ã`` + ``©``), which share one character span but cover distinct bytes.

Spans are ``(start, end)`` byte offsets into the text, end exclusive, one per token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: the byte each byte-level BPE character stands for.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are
    shifted to code points 256.. in byte order (space is ``Ġ``, newline ``Ċ``).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def is_byte_level(tokenizer) -> bool:
    """Whether a fast tokenizer's pieces are byte-level (GPT-2, Llama-3, Qwen, ``bpe_tokenizer``)."""
    backend = tokenizer.backend_tokenizer
    return "ByteLevel" in repr(backend.decoder) or "ByteLevel" in repr(backend.pre_tokenizer)


def token_bytes(tokenizer, *, eos_text: str | None = None) -> list[bytes]:
    """The bytes of every id ``0 .. len(tokenizer) - 1``, so that the text of ids is their concatenation.

    Added and special tokens stand for their content (``<eos>`` is 5 bytes); byte-level pieces map
    back through `byte_level_alphabet`; SentencePiece-style ``▁`` is a space and ``<0xNN>`` one
    byte; other pieces are their own UTF-8. ``eos_text`` replaces the text of ``<eos>``: the other
    tokenizer's ``<eos>``, so that it reads this one's end of sequence as its own.
    """
    alphabet = byte_level_alphabet() if is_byte_level(tokenizer) else None
    metaspace = "Metaspace" in repr(tokenizer.backend_tokenizer.decoder)
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table = []
    for index, piece in enumerate(pieces):
        if index == tokenizer.eos_token_id and eos_text is not None:
            table.append(eos_text.encode())
        elif index in added or piece is None:
            table.append((added.get(index) or "").encode())
        elif alphabet is not None and all(ch in alphabet for ch in piece):
            table.append(bytes(alphabet[ch] for ch in piece))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append((piece.replace("▁", " ") if metaspace else piece).encode())
    return table


def text_bytes(ids: Sequence[int], table: Sequence[bytes]) -> bytes:
    """The bytes of ``ids`` (an id past the tokenizer, a model's padding logit, stands for nothing)."""
    return b"".join(table[i] if i < len(table) else b"" for i in ids)


def spans_from_ids(ids: Sequence[int], table: Sequence[bytes]) -> list[tuple[int, int]]:
    """Byte spans of ``ids`` laid end to end: token k covers ``[sum_{j<k} |b_j|, sum_{j<=k} |b_j|)``
    (empty for an id past the tokenizer)."""
    spans, cursor = [], 0
    for index in ids:
        width = len(table[index]) if index < len(table) else 0
        spans.append((cursor, cursor + width))
        cursor += width
    return spans


def spans_from_offsets(text: str, char_offsets: Sequence[tuple[int, int]], ids: Sequence[int],
                       table: Sequence[bytes]) -> list[tuple[int, int]]:
    """Byte spans of a fast tokenizer's encoding of ``text`` (``return_offsets_mapping``).

    When the ids' bytes laid end to end are exactly the text's bytes (byte-level BPE, character
    tokenizers), that layout is the answer: it also splits a character shared by several byte
    tokens. Otherwise the character offsets are converted to byte offsets; tokens that share one
    character span get consecutive pieces of it when their bytes fill it exactly.
    """
    data = text.encode()
    if text_bytes(ids, table) == data:
        return spans_from_ids(ids, table)
    to_byte = [0]
    for ch in text:
        to_byte.append(to_byte[-1] + len(ch.encode()))
    spans = [(to_byte[a], to_byte[b]) for a, b in char_offsets]
    k = 0
    while k < len(spans):  # runs of one shared span (a character split into bytes)
        run = k + 1
        while run < len(spans) and spans[run] == spans[k]:
            run += 1
        start, end = spans[k]
        widths = [len(table[i]) for i in ids[k:run]]
        if run - k > 1 and sum(widths) == end - start:
            for j, width in zip(range(k, run), widths):
                spans[j] = (start, start + width)
                start += width
        k = run
    return spans

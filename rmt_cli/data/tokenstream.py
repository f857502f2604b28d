"""Tokenizing a stream piece by piece with exactly the tokens of tokenizing the whole text at once.

Text is committed only up to a pre-token boundary that more text cannot move: the start of the second-to-last
pre-token of what has been seen. Byte-level BPE tokenizers (GPT-2 style, and the BPE rmt trains) never merge
across pre-tokens, so the committed tokens are a prefix of the whole text's tokens. The rest (a word or two) is
carried as text; the memory file keeps it, so appending more input continues exactly.
"""

from __future__ import annotations

import re
from typing import Iterator

MAX_CARRY_CHARS = 4096  # a text with no boundary for this long (minified code) is cut here, inexactly
_WHITESPACE_BOUNDARY = re.compile(r"(?<=\S)(?=\s)")


class TokenStream:
    def __init__(self, tokenizer, carry: str = ""):
        self.tokenizer = tokenizer
        self.carry = carry
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._pre = backend.pre_tokenizer if backend is not None else None

    def _boundary(self, text: str) -> int:
        """An offset in `text` before which tokenization is final."""
        if self._pre is not None:
            pieces = self._pre.pre_tokenize_str(text)
            if len(pieces) < 3:
                return 0
            return pieces[-2][1][0]
        starts = [m.start() for m in _WHITESPACE_BOUNDARY.finditer(text)]
        return starts[-2] if len(starts) >= 2 else 0

    def feed(self, text: str) -> list[int]:
        """Tokens that are now final; the rest waits in `carry`."""
        buffer = self.carry + text
        cut = self._boundary(buffer)
        if len(buffer) - cut > MAX_CARRY_CHARS:
            # No boundary for this long (one huge "word"): cut anyway so the carry stays bounded (inexact here).
            cut = len(buffer) - MAX_CARRY_CHARS // 2
        if cut == 0:
            self.carry = buffer
            return []
        self.carry = buffer[cut:]
        return self.tokenizer.encode(buffer[:cut], add_special_tokens=False)

    def peek_rest(self) -> list[int]:
        """Tokens of the carried text, as if the input ended here (nothing is committed)."""
        return self.tokenizer.encode(self.carry, add_special_tokens=False) if self.carry else []


class DocumentTokens:
    """A document read as final tokens: bytes -> UTF-8 text -> tokens, chunk by chunk.

    Resumable from a memory file's (pending bytes, carried text). Ingest and perplexity both read this way.
    """

    def __init__(self, document, tokenizer, pending: bytes = b"", carry: str = ""):
        from .sources import Utf8Stream

        self.document = document
        self.utf8 = Utf8Stream(pending)
        self.stream = TokenStream(tokenizer, carry)
        self._chunks = document.chunks()
        self.bytes_read = 0
        self.exhausted = False
        self.replaced_in: dict[str, int] = {}  # invalid UTF-8 sequences read as U+FFFD, by the file they were in

    def read(self) -> list[int]:
        """Tokens made final by the next chunk; sets `exhausted` (and returns []) at the end of the input."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.exhausted = True
            return []
        self.bytes_read += len(chunk)
        before = self.utf8.replaced
        text = self.utf8.decode(chunk)
        if self.utf8.replaced > before and getattr(self.document, "records", None):
            name = self.document.records[-1].name  # a chunk never spans two files: the file being read
            self.replaced_in[name] = self.replaced_in.get(name, 0) + self.utf8.replaced - before
        return self.stream.feed(text)

    def chunks(self) -> Iterator[list[int]]:
        """`read` until the input ends."""
        while True:
            tokens = self.read()
            if self.exhausted:
                return
            yield tokens

    def rest(self) -> list[int]:
        """Tokens of the carried text, as if the input ended here."""
        return self.stream.peek_rest()

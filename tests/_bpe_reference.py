"""The pure-Python GPT-2 BPE that sparse24_train.data used before tiktoken, kept as the
reference the tiktoken-backed GPT2Tokenizer is compared against (tests/test_tokenizer.py).

Split text with GPT-2's pattern, then in each word repeatedly merge the adjacent pair of
byte strings with the lowest rank: with merges.txt the rank is the merge's line number
(`pair_ranks`), with a tiktoken file the rank of the merged token (`merged_ranks`).
Needs the `regex` package for the exact pattern.
"""

import regex

PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class ReferenceBPE:
    def __init__(self, encoder: dict[bytes, int], pair_rank):
        self.encoder, self.pair_rank, self.cache = encoder, pair_rank, {}

    @classmethod
    def pair_ranks(cls, encoder, merges):
        rank = {}
        for m in merges:
            rank.setdefault(m, len(rank))
        return cls(encoder, lambda a, b: rank.get((a, b)))

    @classmethod
    def merged_ranks(cls, encoder):
        return cls(encoder, lambda a, b: encoder.get(a + b))

    def _bpe(self, word: bytes) -> list[int]:
        if word in self.cache:
            return self.cache[word]
        parts = [bytes([b]) for b in word]
        while len(parts) > 1:
            ranks = [(r, i) for i in range(len(parts) - 1)
                     if (r := self.pair_rank(parts[i], parts[i + 1])) is not None]
            if not ranks:
                break
            i = min(ranks)[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.encoder[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for word in PAT.findall(text) for i in self._bpe(word.encode("utf-8"))]

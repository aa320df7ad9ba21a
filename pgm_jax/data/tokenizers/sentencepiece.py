"""SentencePiece tokenizer with an appended MASK id, trained on the train documents."""

import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from pgm_jax.data.errors import DataError

# Fixed piece ids, the same in every trained model.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Training sees lines, never a whole document; longer lines are cut into pieces of this many
# characters, which stay below _MAX_SENTENCE_BYTES (UTF-8 uses at most 4 bytes per character).
_MAX_LINE_CHARS = 4096
_MAX_SENTENCE_BYTES = 4 * _MAX_LINE_CHARS


class SentencePieceTokenizer:
    """A SentencePiece model plus one extra MASK id.

    Ids 0 .. n_pieces - 1 are SentencePiece pieces (pad 0, unk 1, bos 2, eos 3); the MASK id is
    appended after them (GPT-2 style), so `mask_id == n_pieces` and `vocab_size == n_pieces + 1`
    is the vocabulary the model embeds.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "sentencepiece model"):
        self.model_proto = model_proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as e:  # a truncated / corrupt .model file
            raise DataError(
                f"{source} is not a valid sentencepiece model ({str(e).splitlines()[0]}): "
                "delete it to retrain, or restore it from a backup"
            ) from e
        self.n_pieces: int = self._sp.get_piece_size()
        self.vocab_size: int = self.n_pieces + 1
        self.mask_id: int = self.n_pieces
        self.pad_id: int = self._sp.pad_id()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self._dropped = frozenset((self.pad_id, self.bos_id, self.eos_id, self.mask_id))

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        with open(path, "rb") as f:
            return cls(f.read(), source=path)

    def save(self, directory: str) -> dict:
        """Writes tokenizer.model to `directory`; returns the manifest entry."""
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(self.model_proto)
        return {"kind": self.kind}

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids, without BOS/EOS."""
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Pad, BOS, EOS, MASK and out-of-range ids are dropped, so any model output
        (e.g. a partly unmasked sample) decodes."""
        pieces = [i for i in map(int, ids) if 0 <= i < self.n_pieces and i not in self._dropped]
        return self._sp.decode(pieces)


def load_or_train_tokenizer(docs: Sequence[str], vocab_size: int,
                            path: str) -> SentencePieceTokenizer:
    """Loads the tokenizer at `path`, or trains one with `vocab_size` pieces on `docs` and writes
    it to `path` atomically. Training is deterministic, so processes that race here agree."""
    if os.path.exists(path):
        tokenizer = SentencePieceTokenizer.from_file(path)
        if tokenizer.n_pieces != vocab_size:
            raise DataError(
                f"tokenizer {path} has {tokenizer.n_pieces} pieces but data.vocab_size="
                f"{vocab_size}: delete it to retrain, or set data.vocab_size={tokenizer.n_pieces}")
        return tokenizer
    tokenizer = SentencePieceTokenizer(train_sentencepiece(docs, vocab_size))
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
        f.write(tokenizer.model_proto)
    os.replace(f.name, path)
    return tokenizer


def train_sentencepiece(docs: Sequence[str], vocab_size: int) -> bytes:
    """Trains a byte-fallback BPE model on the lines of `docs`; returns the serialized model.

    Identity normalisation, kept whitespace, byte fallback and a "\\n" piece make
    `decode(encode(text)) == text` for any text, code indentation and newlines included.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(docs),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            user_defined_symbols=["\n"],
            character_coverage=1.0,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1]
        raise DataError(
            f"sentencepiece training with data.vocab_size={vocab_size} failed: {message}") from None
    return model.getvalue()


def _training_lines(docs: Sequence[str]) -> Iterator[str]:
    """The non-blank lines of `docs`, cut to at most _MAX_LINE_CHARS characters."""
    for doc in docs:
        for line in doc.splitlines():
            if line.strip():
                for start in range(0, len(line), _MAX_LINE_CHARS):
                    yield line[start:start + _MAX_LINE_CHARS]

"""LM1B from a local TFDS data dir (ArrayRecord through `tfds.data_source`, no TensorFlow).

`python -m pgm_jax.data.prepare lm1b` builds that dir from the extracted statmt.org download
(`build_tfds_lm1b`, TensorFlow-free; a TFDS build made elsewhere in ArrayRecord works too). As
the reference (spec §4.2-4.3): the `train` split trains and the `test` split validates; each
sentence goes through the reference's LM1B detokenizer, then bert-base-uncased WordPiece, and
becomes `[CLS] sentence [SEP] [PAD]...`, truncated to L = 128 (padded, not wrapped). Options:
`data.pack` packs the train sentences (segment ids) instead of padding them; `data.wrap` wraps
them like OpenWebText.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.lm1b import lm1b_dataset_builder

from pgm_jax.data.errors import DataError
from pgm_jax.data.tokenizers.wordpiece import WordPieceTokenizer

BUILD_HINT = "python -m pgm_jax.data.prepare lm1b --input=LM1B_DIR --output={path}"
TRAIN_FILES = "training-monolingual.tokenized.shuffled/news.en-*"
TEST_FILES = "heldout-monolingual.tokenized.shuffled/news.en.heldout-*"

# The reference's `lm1b_detokenizer`: undo LM1B's tokenized spacing around punctuation, quotes,
# brackets, URLs and currency signs. Applied in order.
_DETOKENIZE = [(re.compile(p), r) for p, r in (
    (r"http : / / ", "http://"),
    (r"https : / / ", "https://"),
    (r" '(\w+)", r"'\1"),
    (r" (\w+) \. ", r" \1. "),
    (r" (\w+) \.$", r" \1."),
    (r" \? ", "? "),
    (r" \?$", "?"),
    (r" ! ", "! "),
    (r" !$", "!"),
    (r" , ", ", "),
    (r" : ", ": "),
    (r" ; ", "; "),
    (r" / ", "/"),
    (r'" ([^"]+) "', r'"\1"'),
    (r"' ([^']+) '", r"'\1'"),
    (r"\( ([^()]+) \)", r"(\1)"),
    (r"\[ ([^\[\]]+) \]", r"[\1]"),
    (r"\$ ", "$"),
    (r"£ ", "£"),
)]


def detokenize(text: str) -> str:
    """LM1B's space-separated tokens -> ordinary text (the reference's rules)."""
    for pattern, replacement in _DETOKENIZE:
        text = pattern.sub(replacement, text)
    return text


class LM1BDocs:
    """A TFDS lm1b split as token ids: `[i]` -> int32[n] (WordPiece, no [CLS]/[SEP])."""

    def __init__(self, source, tokenizer: WordPieceTokenizer):
        self.source, self.tokenizer = source, tokenizer

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        text = self.source[index]["text"]
        if isinstance(text, bytes):  # ArrayRecord gives bytes, tfds mock data str
            text = text.decode("utf-8")
        return np.asarray(self.tokenizer.encode(detokenize(text)), np.int32)


def wordpiece_tokenizer(data_dir: str, vocab_path: str) -> WordPieceTokenizer:
    """bert-base-uncased WordPiece from `vocab_path`, default DATA_DIR/vocab.txt."""
    path = vocab_path or os.path.join(data_dir, "vocab.txt")
    if not os.path.isfile(path):
        raise DataError(
            f"LM1B uses bert-base-uncased WordPiece: {path} not found; set "
            "data.tokenizer_path=/path/to/vocab.txt (bert-base-uncased's) or copy it there")
    return WordPieceTokenizer.from_file(path, lowercase=True)


def open_lm1b(data_dir: str, vocab_path: str = ""
              ) -> tuple[WordPieceTokenizer, dict[str, LM1BDocs]]:
    """(tokenizer, {'train': ..., 'test': ...}) from the TFDS data dir `data_dir`."""
    if not data_dir:
        raise DataError(
            "data.source=lm1b needs data.path=TFDS_DATA_DIR (holding lm1b/1.1.0 in ArrayRecord "
            f"format; build it once with `{BUILD_HINT.format(path='DIR')}`)")
    sources = {}
    for split in ("train", "test"):
        try:
            sources[split] = tfds.data_source("lm1b", split=split, data_dir=data_dir,
                                              download=False)
        except Exception as e:  # tfds raises several types for a missing / non-ArrayRecord dir
            raise DataError(
                f"data.path={data_dir!r} has no readable TFDS lm1b {split} split "
                f"({type(e).__name__}): build it once with `{BUILD_HINT.format(path=data_dir)}`"
                ) from None
    tokenizer = wordpiece_tokenizer(data_dir, vocab_path)
    return tokenizer, {split: LM1BDocs(source, tokenizer) for split, source in sources.items()}


class _LocalLM1B(lm1b_dataset_builder.Builder, skip_registration=True):
    """TFDS's lm1b builder reading an already extracted download, with no TensorFlow call.

    Same name, version, features, split names and example keys as TFDS's own build, so
    `tfds.data_source("lm1b")` reads the result as usual.
    """

    name = "lm1b"
    url_infos = None  # nothing is downloaded (and TFDS need not locate this module's files)

    def __init__(self, source_dir: str, **kwargs):
        self.source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            supervised_keys=("text", "text"), homepage="http://www.statmt.org/lm-benchmark/")

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(sorted(glob.glob(os.path.join(
            self.source_dir, pattern)))) for split, pattern in (("train", TRAIN_FILES),
                                                                 ("test", TEST_FILES))}


def build_tfds_lm1b(source: str, data_dir: str, vocab_path: str = "") -> None:
    """Writes TFDS lm1b (ArrayRecord) into `data_dir` from the extracted statmt.org archive
    (`source` is `1-billion-word-language-modeling-benchmark-r13output` or a folder above it);
    copies a BERT `vocab_path` to DATA_DIR/vocab.txt, where training looks for it."""
    roots = [root for root, _, _ in os.walk(source)
             if glob.glob(os.path.join(root, TRAIN_FILES)) and glob.glob(
                 os.path.join(root, TEST_FILES))]
    if not roots:
        raise DataError(
            f"--input={source!r} holds no LM1B files ({TRAIN_FILES} and {TEST_FILES}): extract "
            "1-billion-word-language-modeling-benchmark-r13output.tar.gz and name that folder")
    builder = _LocalLM1B(roots[0], data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    if vocab_path:
        wordpiece_tokenizer(data_dir, vocab_path)  # a BERT vocabulary, or a clear error now
        shutil.copyfile(vocab_path, os.path.join(data_dir, "vocab.txt"))

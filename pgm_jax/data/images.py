"""Image data: class-labelled grids of image tokens -> grain batches for the trainer.

`load_image_data` is the trainer's entry point for the image algorithms. By `data.source`:
  digits       the 8x8 digits bundled with scikit-learn (1,797 images, 10 classes, no download);
               the pixel level 0..16 is the token (model.codebook_size = 17, model.length = 64);
               the last `data.val_fraction` of each class (in dataset order) is held out;
  imagenet_vq  a folder made by `python -m pgm_jax.data.prepare imagenet_vq` (VQ codes of
               ImageNet, `pgm_jax.data.imagenet_vq.open_split`).
An image is N = side * side tokens in raster order (token k at row k // side, col k % side).
The returned `ImageData` makes the train iterator and the exact evaluation batches; the grain
pieces (shuffling, per-process rows, iterator state) are `pipeline.train_iterator`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging

from pgm_jax.data.errors import DataError
from pgm_jax.data.examples import Example, Examples
from pgm_jax.data.pipeline import (
    Batch,
    eval_batches,
    num_eval_batches,
    train_iterator,
)

DIGITS_SIDE, DIGITS_CLASSES, DIGITS_LEVELS = 8, 10, 17  # pixel values 0..16 are the tokens
PREPARE_HINT = ("python -m pgm_jax.data.prepare imagenet_vq --input=IMAGENET_DIR --vq=VQ.pt "
                "--output={path}")


class LabelledImages:
    """In-memory images: `[i]` -> {"tokens": int32[N], "label": int32[]}."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray):
        self.tokens = np.asarray(tokens, np.int32)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> Example:
        return {"tokens": self.tokens[index], "label": self.labels[index]}


class _Int32Rows:
    """A data source of {"tokens", "label"} records (any int dtype) as int32 examples."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Example:
        row = self.source[index]
        return {"tokens": np.asarray(row["tokens"], np.int32),
                "label": np.asarray(row["label"], np.int32)}


@dataclasses.dataclass(frozen=True)
class ImageData:
    """An image dataset ready for the trainer.

    `train` / `val` rows are {"tokens": int32[N], "label": int32[]}; tokens are codes
    0..codebook_size-1 in raster order, labels 0..num_classes-1.
    """

    source: str
    train: Examples
    val: Examples
    num_classes: int
    codebook_size: int
    side: int

    def train_iterator(self, global_batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1, worker_count: int = 0) -> Iterator[Batch]:
        """This process's endless, shuffled batches {"tokens": int32[B / P, N], "label":
        int32[B / P]}, with a checkpointable state (see `pipeline.train_iterator`)."""
        return train_iterator(self.train, global_batch_size, seed, process_index, process_count,
                              worker_count)

    def eval_batches(self, batch_size: int, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[Batch]:
        """Every validation image once, in order, the last batch padded (`eval_batches`)."""
        return eval_batches(self.val, batch_size, process_index, process_count)

    def num_eval_batches(self, batch_size: int) -> int:
        return num_eval_batches(len(self.val), batch_size)

    def pixels(self, tokens: np.ndarray) -> np.ndarray | None:
        """int[B, N] tokens -> float32 [B, side, side] intensities in [0, 1], or None where
        tokens are VQ codes (decoding them needs the VQ model)."""
        return digits_pixels(tokens) if self.source == "digits" else None


def digits_pixels(tokens: np.ndarray) -> np.ndarray:
    """int[B, 64] pixel levels -> float32 [B, 8, 8] intensities level / 16 (clipped)."""
    levels = np.clip(np.asarray(tokens), 0, DIGITS_LEVELS - 1).astype(np.float32)
    return levels.reshape(-1, DIGITS_SIDE, DIGITS_SIDE) / (DIGITS_LEVELS - 1)


def load_image_data(data_cfg: ml_collections.ConfigDict, length: int, codebook_size: int,
                    num_classes: int) -> ImageData:
    """Opens `data_cfg.source` and checks it against the model's image keys.

    Args:
      data_cfg: ConfigDict with `source` ('digits' | 'imagenet_vq'); digits: `val_fraction`
        (held out per class); imagenet_vq: `path` (the prepared folder).
      length: model.length, N tokens per image; codebook_size, num_classes: the model's.
    Raises DataError naming the key to change when the data does not fit them.
    """
    if data_cfg.source == "digits":
        data = _digits(data_cfg.val_fraction)
    elif data_cfg.source == "imagenet_vq":
        data = _imagenet_vq(data_cfg.get("path", ""))
    else:
        raise DataError(f"data.source={data_cfg.source!r} is not an image source: use digits "
                        "or imagenet_vq")
    got = {"model.length": (length, data.side * data.side),
           "model.codebook_size": (codebook_size, data.codebook_size),
           "model.num_classes": (num_classes, data.num_classes)}
    for key, (model_value, data_value) in got.items():
        if model_value != data_value:
            raise DataError(f"config.{key}={model_value} but data.source={data.source} has "
                            f"{data_value}: set --config.{key}={data_value}")
    logging.info("data %s: %d train / %d validation images of %dx%d tokens, codebook %d, "
                 "%d classes", data.source, len(data.train), len(data.val), data.side, data.side,
                 data.codebook_size, data.num_classes)
    return data


def digits_split(val_fraction: float) -> tuple[LabelledImages, LabelledImages]:
    """(train, validation) digits: the last ceil(val_fraction * n_c) images of each class c,
    in dataset order, are held out; both splits keep the dataset order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    tokens = digits.images.reshape(len(digits.images), -1).astype(np.int32)  # [1797, 64]
    labels = digits.target.astype(np.int32)
    held = np.zeros(len(labels), bool)
    for c in range(DIGITS_CLASSES):
        idx = np.flatnonzero(labels == c)
        held[idx[len(idx) - math.ceil(val_fraction * len(idx)):]] = True
    return (LabelledImages(tokens[~held], labels[~held]),
            LabelledImages(tokens[held], labels[held]))


def _digits(val_fraction: float) -> ImageData:
    train, val = digits_split(val_fraction)
    return ImageData("digits", train, val, DIGITS_CLASSES, DIGITS_LEVELS, DIGITS_SIDE)


def _imagenet_vq(path: str) -> ImageData:
    """The train / validation splits of a prepared ImageNet-VQ folder."""
    hint = PREPARE_HINT.format(path=path or "DIR")
    if not path:
        raise DataError(f"data.source=imagenet_vq reads a prepared folder: set data.path=DIR, "
                        f"made by `{hint}`")
    from pgm_jax.data import imagenet_vq

    train, manifest = imagenet_vq.open_split(path, "train")
    val, _ = imagenet_vq.open_split(path, "validation")
    side = int(manifest.get("side") or math.isqrt(int(manifest["num_tokens"])))
    return ImageData("imagenet_vq", _Int32Rows(train), _Int32Rows(val),
                     int(manifest["num_classes"]), int(manifest["codebook_size"]), side)


def vq_pixels(vq, codes: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """int[M, N] VQ codes -> float32 [M, H, W, 3] in [0, 1] with the VQModel `vq` (loaded by the
    caller, e.g. `interop.vq_convert.vq_from_checkpoint`): decoded `batch_size` at a time,
    clipped to [-1, 1] and mapped by (x + 1) / 2 (spec pgm_image.md §1.6)."""
    from pgm_jax.models.vq import jit_method

    side = math.isqrt(codes.shape[1])
    decode = jit_method(vq, "decode_codes")
    out = []
    for start in range(0, len(codes), batch_size):
        chunk = np.asarray(codes[start:start + batch_size]).reshape(-1, side, side)
        n = len(chunk)
        chunk = np.pad(chunk, ((0, batch_size - n), (0, 0), (0, 0)))  # one compiled shape
        images = np.asarray(decode(chunk.astype(np.int32)))[:n]
        out.append((np.clip(images, -1.0, 1.0) + 1.0) / 2.0)
    return np.concatenate(out).astype(np.float32)

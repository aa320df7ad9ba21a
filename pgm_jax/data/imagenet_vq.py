"""ImageNet -> LlamaGen VQ codes, once, offline (spec pgm_image.md §1.2, §1.4, §1.5).

  python -m pgm_jax.data.prepare imagenet_vq --input=IMAGENET_DIR --vq=vq_ds8_c2i.pt \\
      --output=data/imagenet_vq [--split=train|validation] [--batch_size=64]

Input: a folder of class folders (sorted folder names -> labels 0..C-1; JPEG / PNG / ... read
with Pillow), directly or under `train/` and `validation/` (or `val/`); or a TFDS data dir
holding `imagenet2012` in ArrayRecord format (read through `tfds` without TensorFlow).
Every image is preprocessed as the reference (Resize(S) with PIL bilinear + antialias: the
short side to S, the long side int(S * long / short); CenterCrop(S); x / 255 * 2 - 1; no
augmentation), encoded by the VQ model in jitted batches, and stored in input order (the
reference shuffled and dropped its last partial batch; here every image is kept once).

Output, beside the prepared-text format (`prepared_store.py`):
  OUT/manifest.json                     format, side, num_tokens, codebook_size, num_classes,
                                        class_names, dtype, splits {files, examples, ...}
  OUT/<split>-00000-of-00129.array_record  one record per image: the raw bytes of
                                        dtype[N + 1] = codes in raster order, then the label
A shard is written atomically and marked done by its `.json`; rerunning the command resumes.
`open_split(OUT, split)` reads a split back as {"tokens": int32[N], "label": int32} items.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import grain
import jax
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from pgm_jax.data import prepared_store
from pgm_jax.data.errors import DataError

if TYPE_CHECKING:
    from pgm_jax.models.vq import VQModel

FORMAT = "pgm_jax.imagenet_vq.v1"
SPLITS = ("train", "validation")
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val")}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
SHARD_IMAGES = 10_000  # ~20 MB of uint16 codes per shard at 32x32 tokens
TFDS_NAME = "imagenet2012"
PREPARE_HINT = ("python -m pgm_jax.data.prepare imagenet_vq --input=IMAGENET_DIR "
                "--vq=vq_ds8_c2i.pt --output={path} --split={split}")


# ----------------------------------------------------------------------------- preprocessing
def preprocess(image: Image.Image, size: int = 256) -> np.ndarray:
    """PIL image -> float32[size, size, 3] in [-1, 1]: torchvision's Resize(size) (PIL bilinear,
    antialiased when shrinking), CenterCrop(size), ToTensor, Normalize(0.5, 0.5)."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)  # torchvision truncates
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    # torchvision rounds the crop offset with Python's round (half to even).
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, np.float32) / np.float32(255.0)
    return (x - 0.5) / 0.5


class ImageSource(Protocol):
    """The images of one split, in a fixed order."""

    class_names: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int, size: int) -> tuple[np.ndarray, int]:
        """(preprocessed float32[size, size, 3], label) of image `index`."""
        ...


@dataclasses.dataclass
class FolderImages:
    """A folder of class folders; files sorted by name inside each class."""

    root: str
    class_names: list[str]
    files: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, size: int) -> tuple[np.ndarray, int]:
        try:
            with Image.open(self.files[index]) as image:
                return preprocess(image, size), int(self.labels[index])
        except (OSError, ValueError) as e:
            raise DataError(f"{self.files[index]}: not a readable image ({e})") from None


class TfdsImages:
    """TFDS `imagenet2012` in ArrayRecord (no TensorFlow): `image` uint8 arrays and `label`."""

    def __init__(self, builder_dir: str, split: str):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder_from_directory(builder_dir)
            self.source = builder.as_data_source(split=split)
        except Exception as e:  # tfds raises several types for missing / TFRecord-only data
            raise DataError(
                f"{builder_dir}: no readable {TFDS_NAME} {split!r} split in ArrayRecord format "
                f"({type(e).__name__}: {e}); a TFRecord build needs TensorFlow: use a folder "
                "of class folders instead") from None
        self.class_names = list(builder.info.features["label"].names)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, size: int) -> tuple[np.ndarray, int]:
        item = self.source[index]
        image = item["image"]
        # tfds decodes to uint8 arrays; with decoding skipped it gives the encoded bytes.
        if isinstance(image, np.ndarray):
            return preprocess(Image.fromarray(image), size), int(item["label"])
        with Image.open(io.BytesIO(image)) as decoded:
            return preprocess(decoded, size), int(item["label"])


def _tfds_builder_dir(path: str) -> str | None:
    """The `imagenet2012/<version>` folder (latest) of a TFDS data dir, or None."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    base = path if os.path.basename(os.path.normpath(path)) == TFDS_NAME else os.path.join(
        path, TFDS_NAME)
    if not os.path.isdir(base):
        return None
    versions = sorted((v for v in os.listdir(base)
                       if os.path.isfile(os.path.join(base, v, "dataset_info.json"))),
                      key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
    return os.path.join(base, versions[-1]) if versions else None


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def find_images(path: str, split: str) -> ImageSource:
    """The `split` images of a class-folder tree or a TFDS data dir at `path` (see module doc)."""
    if not os.path.isdir(path):
        raise DataError(f"--input={path}: no such folder (ImageNet class folders or a TFDS "
                        "data dir)")
    builder_dir = _tfds_builder_dir(path)
    if builder_dir is not None:
        return TfdsImages(builder_dir, split)
    names = _subdirs(path)
    split_dirs = [n for n in names if n in sum(SPLIT_FOLDERS.values(), ())]
    root = path
    if split_dirs:
        found = [n for n in SPLIT_FOLDERS[split] if n in names]
        if not found:
            raise DataError(f"--input={path} has {', '.join(split_dirs)}/ but no "
                            f"{' or '.join(SPLIT_FOLDERS[split])}/ folder for --split={split}")
        root = os.path.join(path, found[0])
    classes = _subdirs(root)
    if not classes:
        loose = any(_is_image(n) for n in os.listdir(root))
        raise DataError(
            f"{root}: no class folders" + (" (it holds loose images: sort them into one folder "
                                           "per class first)" if loose else ""))
    files, labels = [], []
    for label, name in enumerate(classes):
        class_files = sorted(e.path for e in os.scandir(os.path.join(root, name))
                             if e.is_file() and _is_image(e.name))
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise DataError(f"{root}: its {len(classes)} class folders hold no "
                        f"{'/'.join(IMAGE_EXTENSIONS)} images")
    return FolderImages(root, classes, files, np.asarray(labels, np.int64))


# ----------------------------------------------------------------------------- preparation
def record_dtype(codebook_size: int, num_classes: int) -> str:
    """uint16 when codes and labels fit (VQ-8: 16384 codes, 1000 classes), else int32."""
    return "uint16" if max(codebook_size, num_classes) <= 1 << 16 else "int32"


def _batches(images: ImageSource, start: int, stop: int, batch_size: int, size: int,
             pool: concurrent.futures.Executor) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(float32[batch_size, size, size, 3] zero-padded, int labels[n], n) for images
    [start, stop); the next batch is decoded by the pool while the caller encodes this one."""
    bounds = [(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)]

    def submit(lo: int, hi: int) -> list[concurrent.futures.Future]:
        return [pool.submit(images.load, i, size) for i in range(lo, hi)]

    ahead = submit(*bounds[0]) if bounds else []
    for k in range(len(bounds)):
        current, ahead = ahead, submit(*bounds[k + 1]) if k + 1 < len(bounds) else []
        batch = np.zeros((batch_size, size, size, 3), np.float32)
        labels = np.empty(len(current), np.int64)
        for j, future in enumerate(current):
            batch[j], labels[j] = future.result()
        yield batch, labels, len(current)


def _shard_rows(images: ImageSource, start: int, stop: int, encode, batch_size: int, size: int,
                pool: concurrent.futures.Executor, bar: tqdm) -> Iterator[np.ndarray]:
    """Records of images [start, stop): codes (raster order) followed by the label."""
    pending = None
    for batch, labels, n in _batches(images, start, stop, batch_size, size, pool):
        codes = encode(batch)  # dispatched asynchronously
        # Pull the previous batch's codes only now, so the device encodes batch k while the
        # host turns batch k - 1 into records and the pool decodes batch k + 1.
        if pending is not None:
            yield from _rows(*pending, bar)
        pending = (codes, labels, n)
    if pending is not None:
        yield from _rows(*pending, bar)


def _rows(codes: jax.Array, labels: np.ndarray, n: int, bar: tqdm) -> Iterator[np.ndarray]:
    codes = np.asarray(codes)[:n].reshape(n, -1)
    bar.update(n)
    for row, label in zip(codes, labels, strict=True):
        yield np.append(row, label)


def _check_same(manifest: dict, expected: dict, path: str) -> None:
    """Splits of one folder share the VQ model, grid and classes."""
    def describe(key: str, value: Any) -> str:
        return f"{len(value)} class names" if key == "class_names" else f"{key}={value}"

    for key, value in expected.items():
        if key in manifest and manifest[key] != value:
            raise DataError(
                f"{path} holds a split prepared with {describe(key, manifest[key])}, this run "
                f"has {describe(key, value)}: use another --output (splits of one folder must "
                "share the VQ model, image size and classes)")


def prepare_imagenet_vq(input: str, vq: VQModel, output: str, split: str = "train",
                        batch_size: int = 64, image_size: int = 256,
                        shard_size: int = SHARD_IMAGES, workers: int | None = None,
                        precision: str | None = None) -> dict:
    """Encodes the `split` images of `input` into OUTPUT (see module doc); returns the manifest.

    Args:
      input: class-folder tree or TFDS data dir.
      vq: the VQ tokenizer (the caller loads it, e.g. `interop.vq_convert.vq_from_checkpoint`).
      split: 'train' or 'validation'.
      batch_size: images per jitted encoder call (the last batch is padded: one compile).
      image_size: S of Resize(S) + CenterCrop(S); the codes grid is S / downsample factor.
      shard_size: images per ArrayRecord shard (fixed on the split's first run).
      workers: image-decoding threads (default: CPU count).
      precision: the VQ's conv / matmul precision, default the model's ("highest": fp32).
        "default" lets GPUs use TF32 (as the reference's extraction did, spec §1.4), several
        times faster; a few near-tied codes may then differ from an fp32 encode.
    """
    from pgm_jax.models.vq import PRECISIONS, jit_method, with_config

    if split not in SPLITS:
        raise DataError(f"--split={split!r}: use train or validation")
    if batch_size < 1 or shard_size < 1:
        raise DataError(f"--batch_size={batch_size} and shard size {shard_size} must be >= 1")
    if not os.path.exists(input):
        raise DataError(f"--input={input}: does not exist (ImageNet class folders or a TFDS "
                        "data dir)")
    model = vq
    if precision is not None:
        if precision not in PRECISIONS:
            raise DataError(f"VQ precision {precision!r}: use one of {PRECISIONS}")
        model = with_config(model, dataclasses.replace(model.cfg, precision=precision))
    cfg = model.cfg
    if image_size % cfg.downsample_factor:
        raise DataError(f"image size {image_size} is not a multiple of the VQ downsample "
                        f"factor {cfg.downsample_factor}")
    images = find_images(input, split)
    side = image_size // cfg.downsample_factor
    num_classes = len(images.class_names)
    dtype = record_dtype(cfg.codebook_size, num_classes)
    os.makedirs(output, exist_ok=True)
    manifest_path = os.path.join(output, prepared_store.MANIFEST)
    manifest = _read_json(manifest_path) if os.path.isfile(manifest_path) else {}
    header = {"format": FORMAT, "side": side, "num_tokens": side * side,
              "codebook_size": cfg.codebook_size, "num_classes": num_classes,
              "class_names": images.class_names, "dtype": dtype, "image_size": image_size,
              "vq": {k: v for k, v in cfg.to_dict().items() if k not in ("precision",
                                                                           "image_size")}}
    _check_same(manifest, header, manifest_path)

    count = len(images)
    plan_path = os.path.join(output, f"{split}.plan.json")
    plan = {"input": os.path.abspath(input), "images": count, "shard_size": shard_size,
            "image_size": image_size, "vq": cfg.to_dict()}
    if os.path.isfile(plan_path):
        old = _read_json(plan_path)
        if old != plan:
            raise DataError(f"{plan_path}: --output holds a {split} preparation of other input "
                            "or options: use another --output, or delete it to start over")
    else:
        prepared_store.write_json(plan_path, plan)

    n_shards = math.ceil(count / shard_size)
    names = [prepared_store.shard_name(split, i, n_shards) for i in range(n_shards)]
    todo = [i for i in range(n_shards)
            if not os.path.isfile(os.path.join(output, names[i] + ".json"))]
    encode_fn = jit_method(model, "encode")

    def encode(batch: np.ndarray) -> jax.Array:
        return encode_fn(batch)[0]

    start_time = time.perf_counter()
    remaining = sum(min(count, (i + 1) * shard_size) - i * shard_size for i in todo)
    logging.info("%s: %d of %d shards to encode (%d images, %dx%d -> %dx%d codes)", split,
                 len(todo), n_shards, remaining, image_size, image_size, side, side)
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, tqdm(
            total=remaining, unit="img", disable=not todo, file=sys.stderr,
            desc=f"encoding {split}") as bar:
        # PIL decodes and resizes with the GIL released, so threads scale for the host side.
        for i in todo:
            lo, hi = i * shard_size, min(count, (i + 1) * shard_size)
            rows = _shard_rows(images, lo, hi, encode, batch_size, image_size, pool, bar)
            written = prepared_store.write_records(os.path.join(output, names[i]), rows, dtype)
            prepared_store.write_json(os.path.join(output, names[i] + ".json"),
                                {"file": names[i], "examples": written, "first": lo})
    seconds = time.perf_counter() - start_time
    if os.path.isfile(manifest_path):  # another split may have finished meanwhile
        manifest = _read_json(manifest_path)
    manifest = {**header, "command": "imagenet_vq",
                "record": f"{dtype}[num_tokens + 1]: codes in raster order, then the label",
                "preprocess": f"Resize({image_size}) PIL bilinear antialiased, "
                              f"CenterCrop({image_size}), [-1, 1]",
                "splits": {**manifest.get("splits", {}), split: {
                    "files": names, "examples": count, "input": os.path.abspath(input),
                    "precision": cfg.precision}}}
    prepared_store.write_json(manifest_path, manifest)
    if todo:
        logging.info("%s: encoded %d images in %.1f s (%.1f images/s)", split, remaining,
                     seconds, remaining / max(seconds, 1e-9))
    return manifest


def run_command(input: str, vq: VQModel, output: str, split: str = "train",
                batch_size: int = 64, image_size: int = 256, precision: str | None = None) -> None:
    """`python -m pgm_jax.data.prepare imagenet_vq` (flags as the arguments, `vq` loaded from
    --vq by the command)."""
    manifest = prepare_imagenet_vq(input, vq, output, split, batch_size, image_size,
                                   precision=precision)
    sizes = ", ".join(f"{s} {v['examples']} images" for s, v in manifest["splits"].items())
    print(f"done: {output}: {sizes}; {manifest['side']}x{manifest['side']} codes of "
          f"{manifest['codebook_size']}, {manifest['num_classes']} classes")


# ----------------------------------------------------------------------------- reading
class VQTokens:
    """A grain RandomAccessDataSource of one split: `[i]` -> {"tokens": int32[N],
    "label": int32[]}."""

    def __init__(self, paths: list[str], dtype: str, num_tokens: int):
        self.paths, self.num_tokens = paths, num_tokens
        self.dtype = np.dtype(dtype)
        self._source = grain.sources.ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = np.frombuffer(self._source[index], self.dtype)
        return {"tokens": row[:self.num_tokens].astype(np.int32),
                "label": np.int32(row[self.num_tokens])}

    def __repr__(self) -> str:  # grain checkpointing identifies sources by repr
        return f"VQTokens({len(self.paths)} shards, {len(self)} records)"


def open_split(path: str, split: str) -> tuple[VQTokens, dict]:
    """(data source, manifest) of `split` in a folder made by `prepare imagenet_vq`."""
    hint = PREPARE_HINT.format(path=path or "OUT", split=split)
    manifest_path = os.path.join(path, prepared_store.MANIFEST)
    if not os.path.isfile(manifest_path):
        raise DataError(f"data.path={path!r} holds no prepared ImageNet VQ codes "
                        f"({prepared_store.MANIFEST} missing): run `{hint}` first")
    manifest = _read_json(manifest_path)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}"
                        f": prepare it with `{hint}`")
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        raise DataError(f"{path} has no {split} split (it has "
                        f"{', '.join(manifest.get('splits', {})) or 'none'}): run `{hint}`")
    files = [os.path.join(path, name) for name in entry["files"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(f"{missing[0]} is missing ({len(missing)} {split} shards in all): copy "
                        f"the whole folder or run `{hint}` again")
    source = VQTokens(files, manifest["dtype"], int(manifest["num_tokens"]))
    if len(source) != entry["examples"]:
        raise DataError(f"{path}: the {split} shards hold {len(source)} records, the manifest "
                        f"says {entry['examples']}: run `{hint}` again")
    return source, manifest


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)

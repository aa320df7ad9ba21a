"""PNG grids of image samples (Pillow), e.g. one row per class.

Images are [N, H, W, C] (C = 1 or 3) or [N, H, W]: uint8 as they are, floats mapped from
`value_range` ((-1, 1) for decoder / sampler outputs, (0, 1) for probabilities) to [0, 255] with
clipping and rounding. Tiles are separated and framed by `pad` pixels of `pad_value`, and
`upscale` repeats every pixel (nearest neighbour) so 32x32 samples stay readable.

Usage:
    save_grid(samples, "runs/demo/samples_step_1000.png", nrow=8)     # samples [N, H, W, 3]
    class_grid({207: dogs, 980: volcanoes}, "runs/demo/classes.png")  # rows = classes
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

ValueRange = tuple[float, float]


def to_uint8(images: np.ndarray, value_range: ValueRange = (-1.0, 1.0)) -> np.ndarray:
    """uint8 [N, H, W, C] from uint8 or float images ([N, H, W] gets C = 1)."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be [N, H, W, C] with C in (1, 3, 4), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"images must be uint8 or floats, got dtype {x.dtype}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range={value_range}: need low < high")
    scaled = (x.astype(np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int = 8, pad: int = 2, upscale: int = 1,
              value_range: ValueRange = (-1.0, 1.0), pad_value: int = 0) -> np.ndarray:
    """uint8 [rows * (H*upscale + pad) + pad, nrow * (W*upscale + pad) + pad, C]: images in
    row-major order, `nrow` per row, the last row's empty cells left as padding."""
    if nrow < 1 or pad < 0 or upscale < 1:
        raise ValueError(f"need nrow >= 1, pad >= 0, upscale >= 1; got {nrow}, {pad}, {upscale}")
    x = to_uint8(images, value_range)
    if x.shape[0] == 0:
        raise ValueError("no images to put in the grid")
    if upscale > 1:
        x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def save_png(grid: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Writes uint8 [H, W, C] as a PNG, creating the parent directory."""
    from PIL import Image

    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")


def save_grid(images: np.ndarray, path: str | os.PathLike[str], nrow: int = 8, pad: int = 2,
              upscale: int = 1, value_range: ValueRange = (-1.0, 1.0), pad_value: int = 0
              ) -> np.ndarray:
    """`make_grid` written to `path` as a PNG; returns the grid (uint8 [H', W', C])."""
    grid = make_grid(images, nrow, pad, upscale, value_range, pad_value)
    save_png(grid, path)
    return grid


def class_grid(samples_by_class: Mapping[object, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
               path: str | os.PathLike[str] | None = None, pad: int = 2, upscale: int = 1,
               value_range: ValueRange = (-1.0, 1.0), pad_value: int = 0) -> np.ndarray:
    """One row per class: {label: [K, H, W, C]} (rows in the mapping's order), a sequence of
    such arrays, or [classes, K, H, W, C]. Rows may hold different K (short rows end in
    padding). Written to `path` as a PNG when given; returns the grid."""
    if isinstance(samples_by_class, Mapping):
        rows = list(samples_by_class.values())
    else:
        rows = list(samples_by_class)
    rows = [to_uint8(r, value_range) for r in rows]
    if not rows or any(r.shape[0] == 0 for r in rows):
        raise ValueError("class_grid needs at least one sample for every class")
    if len({r.shape[1:] for r in rows}) != 1:
        raise ValueError(f"classes have different image shapes: {[r.shape[1:] for r in rows]}")
    width = max(r.shape[0] for r in rows)
    blank = np.full(rows[0].shape[1:], pad_value, np.uint8)
    cells = np.stack([np.concatenate([r, np.repeat(blank[None], width - r.shape[0], 0)])
                      for r in rows])  # [classes, width, H, W, C]
    grid = make_grid(cells.reshape(-1, *cells.shape[2:]), width, pad, upscale, value_range,
                     pad_value)
    if path is not None:
        save_png(grid, path)
    return grid


def save_image_samples(prefix: str, codes: np.ndarray, labels: np.ndarray,
                       pixels: np.ndarray | None, per_row: int, **extra) -> list[str]:
    """Writes `prefix.npz` (codes int32 [M, N], labels int32 [M], and `extra` arrays) and,
    when `pixels` (float [M, H, W] or [M, H, W, C] in [0, 1]) is given, `prefix.png`: a grid
    of `per_row` images per row, small images upscaled to >= 32 pixels (8x8 digits: 4x).
    Returns the paths written."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    np.savez(prefix + ".npz", codes=codes.astype(np.int32), labels=labels.astype(np.int32),
             **extra)
    paths = [prefix + ".npz"]
    if pixels is not None:
        save_grid(pixels, prefix + ".png", per_row, pad=2,
                  upscale=max(1, 32 // pixels.shape[1]), value_range=(0.0, 1.0), pad_value=96)
        paths.append(prefix + ".png")
    return paths

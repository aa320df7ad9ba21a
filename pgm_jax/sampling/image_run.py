"""Image sampling from a run directory: class-grid samples from the EMA weights on the
inference mesh, decoded to pixels where the run's tokens allow, written as `.npz` + `.png`.

Digits tokens are pixel levels (`data.images.digits_pixels`); VQ codes are decoded only with a
VQ model (`vq`, loaded by the caller: `interop.vq_convert.vq_from_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from pgm_jax import sharding
from pgm_jax.config import model_config
from pgm_jax.data import images
from pgm_jax.restore import restore_params
from pgm_jax.sampling import grid
from pgm_jax.sampling import image as image_sampling
from pgm_jax.sampling.settings import SamplerSettings


@dataclasses.dataclass(frozen=True)
class ImageSamples:
    """What `sample_image_run` drew and wrote: codes int32 [M, N] (raster order), labels
    int32 [M], the checkpoint step, the files written (process 0) and the sampling time."""

    codes: np.ndarray
    labels: np.ndarray
    step: int
    paths: list[str]
    seconds: float


def pixels_of(config: ConfigDict, codes: np.ndarray, vq=None) -> np.ndarray | None:
    """float [M, H, W(, C)] in [0, 1] for codes int [M, N]: digits pixel levels always, VQ
    codes when `vq` is given, else None."""
    if config.data.source == "digits":
        return images.digits_pixels(codes)
    return None if vq is None else images.vq_pixels(vq, codes)


def sample_image_run(workdir: str, config: ConfigDict, s: SamplerSettings, prefix: str, *,
                     classes: list[int] | None = None, step: int | None = None, seed: int = 0,
                     vq=None) -> ImageSamples:
    """`s.num_samples` images of each of `classes` (default: `image.grid_labels`' spread)
    from the run's EMA weights, `s.batch_size` at a time over the inference mesh's data axis;
    writes `prefix.npz` (codes, labels, step, settings as JSON) and `prefix.png` (one row per
    class) when the codes can be shown as pixels."""
    mcfg = model_config(config)
    labels = image_sampling.grid_labels(mcfg.num_classes, s.num_samples, classes)
    mesh = sharding.inference_mesh()
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item="ema")
    t0 = time.perf_counter()
    codes = image_sampling.image_samples(graphdef, params, mcfg, jax.random.key(seed), labels,
                                         s.batch_size, mesh=mesh, **s.image_kwargs())
    seconds = time.perf_counter() - t0
    pixels = pixels_of(config, codes, vq)
    paths = []
    if jax.process_index() == 0:
        paths = grid.save_image_samples(prefix, codes, labels, pixels, s.num_samples,
                                        step=np.int64(step),
                                        settings=json.dumps(s.image_kwargs()))
    return ImageSamples(codes, labels, step, paths, seconds)

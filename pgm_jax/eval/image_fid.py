"""FID and Inception Score of a run's class-balanced image samples (spec pgm_image.md §5).

Labels 0, 1, ..., num_classes - 1, 0, 1, ...; the samples are drawn from the EMA weights on the
inference mesh (split over its data axis), decoded by the VQ model, clipped to [-1, 1] and
passed through the FID Inception network on the same mesh; only the feature sums are kept.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ml_collections import ConfigDict

from pgm_jax import sharding
from pgm_jax.cli import require
from pgm_jax.config import model_config
from pgm_jax.data import images
from pgm_jax.eval import fid, inception
from pgm_jax.interop.vq_convert import vq_from_checkpoint
from pgm_jax.restore import restore_params
from pgm_jax.sampling import image as image_sampling
from pgm_jax.sampling.settings import SamplerSettings


def image_fid(workdir: str, config: ConfigDict, s: SamplerSettings, *, inception_path: str,
              fid_stats_path: str, vq_path: str, step: int | None = None, seed: int = 0
              ) -> tuple[dict, int]:
    """(FID / Inception Score of `s.num_samples` samples, checkpoint step).

    Paths: the Inception weights, the reference statistics and the VQ model (local files).
    Samples are drawn a chunk of about 1024 at a time (chunk i keyed `fold_in(key, i)`),
    `s.batch_size` per sampler call.
    """
    mcfg = model_config(config)
    require(s.num_samples >= 10, f"--num_samples={s.num_samples}: must be >= 10 (the "
            "Inception Score's splits)")
    stats_ref = fid.load_stats(fid_stats_path)
    vq = vq_from_checkpoint(vq_path)
    mesh = sharding.inference_mesh()
    extract = inception.InceptionExtractor(inception.load_inception(inception_path), mesh=mesh)
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item="ema")
    num, batch = s.num_samples, s.batch_size
    labels = (np.arange(num) % mcfg.num_classes).astype(np.int32)
    feats, scores = fid.FeatureAccumulator(), fid.ISAccumulator(num)
    key = jax.random.key(seed)
    settings = s.image_kwargs()
    # One chunk of samples at a time: codes -> pixels -> Inception, nothing kept but the sums.
    chunk = batch * max(1, 1024 // batch)
    for i, start in enumerate(range(0, num, chunk)):
        codes = image_sampling.image_samples(graphdef, params, mcfg, jax.random.fold_in(key, i),
                                             labels[start:start + chunk], batch, mesh=mesh,
                                             **settings)
        f, logits = extract(images.vq_pixels(vq, codes) * 2.0 - 1.0)
        feats.update(f)
        scores.update(logits)
        print(f"FID samples: {start + len(codes)}/{num}", flush=True)
    is_mean, is_std = scores.score()
    return {"fid": fid.fid_from_stats(*feats.stats(), *stats_ref), "inception_score": is_mean,
            "inception_score_std": is_std, "num_samples": num, "sampling": settings,
            "seed": seed, "inception": os.path.abspath(inception_path),
            "fid_stats": os.path.abspath(fid_stats_path),
            "vq": os.path.abspath(vq_path)}, step

"""FID and Inception Score from Inception outputs, on the host in float64 (spec §5.3, §8).

- `fid_from_stats`: ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), with scipy's `sqrtm`
  in float64, real part kept; only if the root is not finite, retried with 1e-6 I added to both
  covariances (pytorch-fid / torch-fidelity). `method="eigh"`: the same trace from two
  symmetric eigendecompositions, for frequent evaluations (scipy's sqrtm at D = 2048 takes
  minutes on a small CPU).
- `FeatureAccumulator`: streaming mean and covariance (Chan et al.'s pairwise update in float64),
  so 50k x 2048 features never sit in memory; `merge` combines per-process accumulators.
- `inception_score`: torch-fidelity's: permute the samples, cut them into `splits` chunks
  [i N / s, (i+1) N / s), score exp(mean_x KL(p(y|x) || p(y))) per chunk, report mean and std.
  `ISAccumulator` gives the same numbers streaming, with the permutation drawn up front.
- Reference statistics: `.npz` with `mu`, `sigma` (ADM's VIRTUAL_imagenet256_labeled.npz,
  jax-fid, or `save_stats`), or PGM's torch file `{"mu", "cov"}`.

Usage:
    extract = InceptionExtractor(load_inception(weights_path), mesh=mesh)
    stats, scores = FeatureAccumulator(), ISAccumulator(num_samples=50_000)
    for images in batches:                     # uint8 or float [-1, 1] [B, H, W, 3]
        feats, logits = extract(images)
        stats.update(feats)
        scores.update(logits)
    mu_ref, sigma_ref = load_stats("/data/imagenet_val_256_stats.npz")
    fid = fid_from_stats(*stats.stats(), mu_ref, sigma_ref)
    is_mean, is_std = scores.score()
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np
import scipy.linalg

from pgm_jax.interop.torch_ckpt import CheckpointFormatError, load_torch_checkpoint

SQRTM_EPS = 1e-6
IMAG_TOLERANCE = 1e-3  # pytorch-fid's bound on the diagonal's imaginary part


class StatsFileError(CheckpointFormatError):
    """A reference statistics file that is missing or has no mu / sigma of matching shapes."""


# ----------------------------------------------------------------------------- FID
def _sqrtm_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) as the references compute it: scipy sqrtm, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise both, as pytorch-fid
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        largest = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if largest > IMAG_TOLERANCE:  # pytorch-fid raises; torch-fidelity/PGM keep the real part
            warnings.warn(f"FID: sqrtm has an imaginary component {largest:.3g}; using the real "
                          "part (too few samples for the feature dimension?)", stacklevel=3)
        covmean = covmean.real
    return float(np.trace(covmean))


def _eigh_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): S1 S2 is similar to that PSD
    matrix, so two symmetric eigendecompositions replace the Schur-based sqrtm (much faster
    at D = 2048; equal up to rounding). Tiny negative eigenvalues from rounding count as 0."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None))))


FID_METHODS = ("sqrtm", "eigh")


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                   method: str = "sqrtm") -> float:
    """Frechet distance between N(mu1 [D], sigma1 [D, D]) and N(mu2, sigma2), in float64.

    method "sqrtm" is the references' scipy computation; "eigh" is the fast equivalent for
    frequent evaluations during training."""
    if method not in FID_METHODS:
        raise ValueError(f"method={method!r}: choose one of {FID_METHODS}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                    np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
        np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"FID statistics do not match: mu {mu1.shape} / {mu2.shape}, sigma "
                         f"{sigma1.shape} / {sigma2.shape} (want [D] and [D, D])")
    diff = mu1 - mu2
    tr_covmean = (_sqrtm_trace if method == "sqrtm" else _eigh_trace)(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu float64 [D], sigma float64 [D, D]) of features [N, D]; sigma unbiased (N - 1)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, method: str = "sqrtm"
                      ) -> float:
    """FID between two sets of Inception features [N_a, D] and [N_b, D]."""
    return fid_from_stats(*feature_stats(feats_a), *feature_stats(feats_b), method=method)


class FeatureAccumulator:
    """Streaming mean and covariance of features [B, D] in float64 (O(D^2) memory).

    Each batch's own mean and centred scatter are merged into the running ones (Chan et al.),
    which keeps float64 precision where sum(x x^T) - N mu mu^T would cancel."""

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None  # sum of (x - mean)(x - mean)^T

    def _merge(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        if self.mean is None:
            self.count, self.mean, self.scatter = count, mean, scatter
            return
        total = self.count + count
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + np.outer(delta, delta) * (self.count * count
                                                                          / total)
        self.mean = self.mean + delta * (count / total)
        self.count = total

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(f"features must be [batch, {self.dim or 'D'}], got {x.shape}")
        if x.shape[0] == 0:
            return
        self.dim = x.shape[1]
        mean = x.mean(axis=0)
        centred = x - mean
        self._merge(x.shape[0], mean, centred.T @ centred)

    def merge(self, other: FeatureAccumulator) -> None:
        """Adds another accumulator's samples (e.g. another process's)."""
        if other.mean is not None:
            if self.dim is not None and other.dim != self.dim:
                raise ValueError(f"cannot merge features of dim {other.dim} into {self.dim}")
            self.dim = other.dim
            self._merge(other.count, other.mean, other.scatter)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu float64 [D], sigma float64 [D, D]), sigma unbiased like np.cov."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 samples, got {self.count}")
        return self.mean.copy(), self.scatter / (self.count - 1)


# ----------------------------------------------------------------------------- statistics files
def save_stats(path: str | os.PathLike[str], mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes reference statistics as `.npz` with float64 `mu` [D] and `sigma` [D, D]."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def _is_npz(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:  # torch.save zips hold <prefix>/data.pkl instead
        return not any(name.endswith("data.pkl") for name in zf.namelist())


def load_stats(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mu float64 [D], sigma float64 [D, D]) from `.npz` (mu, sigma) or a torch file
    {"mu", "cov"} (PGM's extract_train_fid.py)."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise StatsFileError(f"{source}: FID reference statistics not found; compute them with "
                             "FeatureAccumulator + save_stats on the reference images (e.g. the "
                             "50k ImageNet-val 256 center crops, spec §8)")
    if _is_npz(source):
        with np.load(source, allow_pickle=False) as data:
            stats = {k: data[k] for k in ("mu", "sigma") if k in data.files}
            keys = list(data.files)
    else:  # a torch.save file (zip or legacy); load_torch_checkpoint names any other file
        state = load_torch_checkpoint(source)
        if not isinstance(state, Mapping):
            raise StatsFileError(f"{source}: holds a {type(state).__name__}, not the statistics "
                                 "mapping {'mu', 'cov'}") from None
        keys = list(state)
        stats = {"mu": state.get("mu"), "sigma": state.get("sigma", state.get("cov"))}
        stats = {k: v for k, v in stats.items() if v is not None}
    if set(stats) != {"mu", "sigma"}:
        raise StatsFileError(f"{source}: FID statistics need keys mu and sigma (or cov), found "
                             f"{keys}")
    mu, sigma = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise StatsFileError(f"{source}: mu {mu.shape} and sigma {sigma.shape} are not [D] and "
                             "[D, D]")
    return mu, sigma


# ----------------------------------------------------------------------------- Inception Score
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _split_bounds(num: int, splits: int) -> np.ndarray:
    """torch-fidelity's chunk i = rows [i N // s, (i+1) N // s)."""
    return np.array([i * num // splits for i in range(splits + 1)])


def _check_splits(num: int, splits: int) -> None:
    if splits < 1 or num < splits:
        raise ValueError(f"inception score: {num} samples cannot make {splits} splits")


def _score_from_sums(count: np.ndarray, neg_entropy: np.ndarray, prob_sum: np.ndarray
                     ) -> tuple[float, float]:
    """Per split, mean KL(p || q) = mean_x sum p log p - sum q log q with q = mean_x p."""
    q = prob_sum / count[:, None]
    q_log_q = np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=1)
    scores = np.exp(neg_entropy / count - q_log_q)
    return float(scores.mean()), float(scores.std())


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over `splits` chunks of exp(E_x KL(p(y|x) || p(y))); logits [N, C] (the
    Inception's logits_unbiased). Samples are permuted first with `seed`, as the reference."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got {logits.shape}")
    _check_splits(logits.shape[0], splits)
    perm = np.random.default_rng(seed).permutation(logits.shape[0])
    log_p = _log_softmax(logits[perm])
    bounds = _split_bounds(logits.shape[0], splits)
    scores = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        lp = log_p[lo:hi]
        p = np.exp(lp)
        log_q = np.log(p.mean(axis=0, keepdims=True))
        scores.append(np.exp(np.sum(p * (lp - log_q), axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class ISAccumulator:
    """Streaming `inception_score` for exactly `num_samples` logits arriving in order: the same
    permutation (same `seed`) assigns each arriving sample its chunk, so the result equals
    `inception_score` of all the logits concatenated. Memory O(splits x classes)."""

    def __init__(self, num_samples: int, splits: int = 10, seed: int = 0):
        _check_splits(num_samples, splits)
        self.num_samples, self.splits = num_samples, splits
        perm = np.random.default_rng(seed).permutation(num_samples)
        position = np.empty(num_samples, np.int64)
        position[perm] = np.arange(num_samples)  # sample k sits at position[k] after permuting
        self._chunk = np.searchsorted(_split_bounds(num_samples, splits), position,
                                      side="right") - 1
        self.seen = 0
        self._count = np.zeros(splits)
        self._neg_entropy = np.zeros(splits)  # sum_x sum_y p log p per chunk
        self._prob_sum: np.ndarray | None = None  # sum_x p(y|x) per chunk [splits, C]

    def update(self, logits: np.ndarray) -> None:
        logits = np.asarray(logits)
        if logits.ndim != 2:
            raise ValueError(f"logits must be [batch, classes], got {logits.shape}")
        n = logits.shape[0]
        if self.seen + n > self.num_samples:
            raise ValueError(f"ISAccumulator(num_samples={self.num_samples}) got "
                             f"{self.seen + n} samples")
        if self._prob_sum is None:
            self._prob_sum = np.zeros((self.splits, logits.shape[1]))
        log_p = _log_softmax(logits)
        p = np.exp(log_p)
        chunk = self._chunk[self.seen:self.seen + n]
        np.add.at(self._count, chunk, 1.0)
        np.add.at(self._neg_entropy, chunk, np.sum(p * log_p, axis=1))
        np.add.at(self._prob_sum, chunk, p)
        self.seen += n

    def score(self) -> tuple[float, float]:
        """(mean, std) over the chunks; needs all `num_samples` samples."""
        if self.seen != self.num_samples:
            raise ValueError(f"ISAccumulator saw {self.seen} of its {self.num_samples} samples")
        return _score_from_sums(self._count, self._neg_entropy, self._prob_sum)

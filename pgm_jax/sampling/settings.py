"""One sampler-settings type for text and images: a run's `sample.*` config overridden by flags.

`SamplerSettings.build` reads the stored config (keys it predates take today's defaults),
applies the non-None overrides and validates every value against the model it will sample;
a bad value raises `cli.UsageError` naming the flag (`--steps=5: ...`), which the entry points
print as one line with exit status 2. The text samplers take `text_kwargs()`
(`sampling.generate_many`), the image samplers `image_kwargs()` (`sampling.image`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ml_collections import ConfigDict

from pgm_jax.cli import require
from pgm_jax.config import IMAGE_ORDERS, on_current_schema
from pgm_jax.models import ModelConfig
from pgm_jax.models.registry import IMAGE_KINDS
from pgm_jax.sampling.pgm import MODES as PGM_MODES

TEXT_ONLY = ("top_p", "float64", "mode")
IMAGE_ONLY = ("order", "cfg_w", "release_quirk")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Every `sample.*` setting (pgm_jax/schema.py documents each); see `build`.

    `num_samples` counts samples in all for text, per class for an image grid (FID counts
    its own). Text only: top_p, float64, mode. Images only: order, cfg_w, release_quirk.
    """

    num_samples: int
    batch_size: int
    steps: int
    top_p: float
    temperature: float
    float64: bool
    mode: str
    bucket: int
    order: str
    cfg_w: float
    release_quirk: bool

    @classmethod
    def build(cls, config: ConfigDict, model_cfg: ModelConfig, *,
              flag_names: Mapping[str, str] | None = None, **overrides) -> SamplerSettings:
        """`config.sample` overridden by the non-None `overrides`, checked for `model_cfg`.

        `flag_names` maps a field to the flag that sets it where the names differ (e.g.
        {"batch_size": "sample_batch_size"}), for the error messages.
        """
        unknown = overrides.keys() - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampler settings {sorted(unknown)}")
        stored = on_current_schema(config).sample
        values = {f.name: stored[f.name] for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check(model_cfg, flag_names or {})
        return settings

    def check(self, model_cfg: ModelConfig, flag_names: Mapping[str, str]) -> None:
        """Raises UsageError for the first value `model_cfg`'s samplers cannot take."""

        def flag(name: str) -> str:
            return f"--{flag_names.get(name, name)}={getattr(self, name)}"

        require(self.num_samples > 0, f"{flag('num_samples')}: must be positive")
        require(self.batch_size > 0, f"{flag('batch_size')}: must be positive")
        require(self.bucket >= 0, f"{flag('bucket')}: must be >= 0 (0 = automatic)")
        n = model_cfg.length
        if model_cfg.kind in IMAGE_KINDS:
            require(0 < self.steps <= n, f"{flag('steps')}: must be in [1, {n}] (the image "
                    "tokens)")
            require(self.order in IMAGE_ORDERS,
                    f"{flag('order')}: must be one of {', '.join(IMAGE_ORDERS)}")
            require(self.cfg_w >= 0, f"{flag('cfg_w')}: must be >= 0")
            # Same meaning as text (logits / temperature); the image samplers have no greedy.
            require(self.temperature > 0, f"{flag('temperature')}: must be > 0 for image runs "
                    "(it divides the logits; 0 = greedy exists for text only)")
            return
        require(0.0 < self.top_p <= 1.0, f"{flag('top_p')}: must be in (0, 1]")
        require(self.temperature >= 0.0, f"{flag('temperature')}: must be >= 0")
        require(self.mode in PGM_MODES, f"{flag('mode')}: must be one of {', '.join(PGM_MODES)}")
        if model_cfg.kind != "ar":  # the diffusion samplers decode length / steps per step
            require(self.steps > 0 and n % self.steps == 0,
                    f"{flag('steps')}: must divide model.length={n}")

    def text_fields(self) -> dict:
        """The settings the text samplers use, num_samples included (as recorded in results)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in IMAGE_ONLY}

    def text_kwargs(self) -> dict:
        """`sampling.generate_many`'s keyword arguments (num_samples apart)."""
        return {k: v for k, v in self.text_fields().items() if k != "num_samples"}

    def image_kwargs(self) -> dict:
        """`sampling.image.sample_images` / `image_samples`' sampler keyword arguments."""
        return {"steps": self.steps, "order": self.order, "temperature": self.temperature,
                "cfg_w": self.cfg_w, "release_quirk": self.release_quirk,
                "bucket": self.bucket}

"""Train (or resume) a PGM / MDLM model.

  python -m pgm_jax.main --config=configs/demo.py --workdir=runs/demo [--config.x.y=...]

Starting on a workdir that holds a checkpoint resumes it exactly (params, optimizer, EMA,
step, RNG and data position).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from pgm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")


def main(argv: list[str]) -> None:
    del argv
    cli.require(_CONFIG.value is not None, "--config is required (e.g. configs/demo.py)")
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    from pgm_jax.train.loop import train  # noqa: PLC0415  (after flags: jax starts here)

    result = train(_CONFIG.value, _WORKDIR.value)
    ev = result.get("eval", {})
    print(f"done: step {result['step']}, val ppl {ev.get('ppl', float('nan')):.2f}")


if __name__ == "__main__":
    cli.run(main)

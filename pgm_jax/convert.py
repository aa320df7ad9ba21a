"""Convert a reference (PyTorch Lightning) checkpoint into a pgm_jax run, or check parity.

  python -m pgm_jax.convert --checkpoint=pgm_8_8.ckpt --config=configs/owt.py:pgm_8_8 \
      --workdir=runs/pgm_8_8 [--weights=ema|raw]
  python -m pgm_jax.convert check DIR [DIR ...]
  python -m pgm_jax.convert vq --checkpoint=vq_ds8_c2i.pt --output=DIR

Converting reads the `.ckpt` without torch (or an `.npz` state dict), checks every key and
shape against the model of --config, and writes WORKDIR/config.json and
WORKDIR/checkpoints/<global_step>/{params, ema}, which `pgm_jax.sample` and `pgm_jax.evaluate`
use as is. `params` holds the raw training weights and `ema` the EMA weights (what the
reference samples and evaluates with); `--weights=raw` stores the raw weights in both (the
reference's lm-eval harness and SDTT use those). An `.npz` holds one set of weights, stored in
both. Without --config the model comes from `hparams.json` beside the checkpoint (the fixture
layout).

`check` rebuilds each fixture directory's model from its `hparams.json`, loads the weights of
both its `.npz` files and its `checkpoint.ckpt` through the converter, recomputes every output
in `io.npz` and prints one line per output (name, weight source, output, max error, tolerance,
OK/FAIL); it exits with status 1 if any output is above tolerance. The family of each
directory (text PGM / MDLM, image PGM / MaskGIT, VQ tokenizer) comes from its hparams.json.

`vq` converts LlamaGen's VQ tokenizer (`{"model": state_dict}`, read without torch) into
DIR/config.json + DIR/params.npz, which `prepare imagenet_vq --vq=DIR` and image evaluation use.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from pgm_jax import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Reference .ckpt (or .npz) to convert.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config whose model matches the checkpoint, e.g. configs/owt.py:pgm_8_8 "
    "(default: hparams.json beside the checkpoint).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to write.")
_OUTPUT = flags.DEFINE_string("output", None, "vq: folder for the converted VQ tokenizer.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                             "Weights stored as `ema` (what sampling and evaluation use).")

USAGE = ("usage: python -m pgm_jax.convert --checkpoint=F --workdir=D [--config=C] | check DIR... "
         "| vq --checkpoint=F --output=D")


def check(dirs: list[str]) -> int:
    """Prints one line per compared output of every fixture in `dirs`; 1 if any fails."""
    from pgm_jax.interop.parity import check_directories

    checked, compared, failed = check_directories(dirs, print)
    cli.require(checked > 0, f"no fixture of a supported model kind among {dirs}")
    verdict = f"{failed} FAILED" if failed else "all within tolerance"
    print(f"{checked} fixture(s), {compared} outputs compared: {verdict}")
    return 1 if failed else 0


def main(argv: list[str]) -> None:
    args = argv[1:]
    if args and args[0] == "check":
        cli.require(len(args) > 1, USAGE)
        sys.exit(check(args[1:]))
    if args == ["vq"]:
        from pgm_jax.interop.vq_convert import convert_vq_main

        return convert_vq_main(_CHECKPOINT.value, _OUTPUT.value)
    cli.require(not args, f"unexpected argument {args[0] if args else ''!r}: {USAGE}")
    cli.require(bool(_CHECKPOINT.value), f"--checkpoint is required (a .ckpt or .npz): {USAGE}")
    cli.require(bool(_WORKDIR.value), f"--workdir is required: {USAGE}")
    from pgm_jax.interop.workdir import convert_to_workdir

    _, step = convert_to_workdir(_CHECKPOINT.value, _WORKDIR.value, _CONFIG.value,
                                 _WEIGHTS.value)
    print(f"wrote {_WORKDIR.value}: config.json and checkpoint step {step} "
          f"(ema = the {_WEIGHTS.value} weights); sample with: python -m pgm_jax.sample "
          f"--workdir={_WORKDIR.value}")


if __name__ == "__main__":
    cli.run(main)

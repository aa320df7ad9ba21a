"""Base configuration: the package's schema with its defaults (pgm_jax/schema.py documents
every key). Other configs start from the schema too; this file makes the defaults runnable.

Run (defaults train PGM on the embedded pydoc text; see configs/demo.py for the CPU demo):
  python -m pgm_jax.main --config=configs/base.py --workdir=runs/base
Override any key on the command line, e.g. `--config.optim.lr=1e-4`.
"""

from ml_collections import ConfigDict

from pgm_jax.schema import default_config


def get_config() -> ConfigDict:
    return default_config()

"""Bad input: each malformed config, argument, data file or checkpoint gives one `error: ...`
line on stderr, exit status 2, no traceback, and leaves the workdir exactly as it was.

ROWS is the table: (id, module and arguments, expected fragment of the error line). Argument
placeholders: {fresh} a workdir (and parent) that does not exist, {run} a copy of a trained
tiny run, {damaged} a copy whose only checkpoint is truncated, {files} malformed inputs. A new
entry point adds its rows here.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from ml_collections import ConfigDict

from pgm_jax.config import ConfigError, validate
from pgm_jax.train import loop
from tests.test_reliability import ENV, cli_args, truncate_largest
from tests.test_train import REPO, tiny

TINY = cli_args(tiny(num_steps=2))
MAIN = ["pgm_jax.main", "--config=configs/demo.py", *TINY]
FRESH = [*MAIN, "--workdir={fresh}"]
SAMPLE = ["pgm_jax.sample"]

ROWS = [
    # command line
    ("unknown config key", [*FRESH, "--config.train.batch_sise=8"],
     "--config.train.batch_sise: 'batch_sise' is not a config key"),
    ("unknown config section", [*FRESH, "--config.trian.batch_size=8"],
     "'trian' is not a config key (Did you mean \"train\""),
    ("int key given text", [*FRESH, "--config.train.batch_size=eight"],
     "--config.train.batch_size=eight: invalid literal for int()"),
    ("float key given text", [*FRESH, "--config.optim.lr=fast"],
     "--config.optim.lr=fast: could not convert string to float"),
    ("unknown flag", [*FRESH, "--learning_rate=0.1"], "Unknown command line flag 'learning_rate'"),
    ("stray positional argument", [*FRESH, "train"], "unexpected argument 'train'"),
    ("no --config", ["pgm_jax.main", "--workdir={fresh}"], "--config is required"),
    ("no --workdir", MAIN, "--workdir is required"),
    ("config file missing", ["pgm_jax.main", "--config=configs/nope.py", "--workdir={fresh}"],
     "--config=configs/nope.py: cannot load it ([Errno 2] No such file"),
    ("config file with a syntax error",
     ["pgm_jax.main", "--config={files}/syntax.py", "--workdir={fresh}"],
     "syntax.py: cannot load it (SyntaxError"),
    ("--workdir is a file", [*MAIN, "--workdir={files}/bad.jsonl"],
     "bad.jsonl: exists and is not a directory"),
    # config values
    ("config file sets an unknown key",
     ["pgm_jax.main", "--config={files}/typo.py", *TINY, "--workdir={fresh}"],
     "config.train.batch_sise: unknown key (did you mean config.train.batch_size?"),
    ("config file sets a wrong type",
     ["pgm_jax.main", "--config={files}/wrong_type.py", *TINY, "--workdir={fresh}"],
     "wrong_type.py: Error whilst parsing config file: TypeError: Could not override field "
     "'keep_checkpoints'"),
    ("negative batch size", [*FRESH, "--config.train.batch_size=-8"],
     "config.train.batch_size=-8: must be a positive integer"),
    ("mesh larger than the devices", [*FRESH, "--config.mesh.data=16"], "8 devices"),
    ("batch not divisible over the data shards", [*FRESH, "--config.train.batch_size=12"],
     "config.train.batch_size=12: must be divisible by the data-parallel size"),
    ("sampling steps do not divide the length", [*FRESH, "--config.sample.steps=5"],
     "config.sample.steps=5: must divide model.length=32"),
    ("unknown algorithm", [*FRESH, "--config.algo=gan"], "config.algo='gan': must be one of"),
    ("unknown non-finite policy", [*FRESH, "--config.train.nonfinite=ignore"],
     "config.train.nonfinite='ignore': must be one of ('skip', 'stop')"),
    # data
    ("data file missing",
     [*FRESH, "--config.data.source=files", "--config.data.files={files}/missing.txt"],
     "missing.txt"),
    ("malformed JSONL record",
     [*FRESH, "--config.data.source=files", "--config.data.files={files}/bad.jsonl"],
     "bad.jsonl"),
    ("data file not UTF-8",
     [*FRESH, "--config.data.source=files", "--config.data.files={files}/latin1.txt"],
     "latin1.txt"),
    ("data shorter than one block (after the tokenizer is written)",
     [*FRESH, "--config.model.length=131072"], "model.length=131072"),
    ("prepared dataset missing",
     [*FRESH, "--config.data.source=text", "--config.data.path={files}/not_prepared"],
     "not_prepared"),
    # checkpoints
    ("resume with another model", [*MAIN, "--workdir={run}", "--config.model.hidden_size=64"],
     "config.model.hidden_size=64 but the checkpoints in"),
    ("resume from a truncated checkpoint", [*MAIN, "--workdir={damaged}"],
     "/checkpoints restores (checkpoint step 2 in"),
    # sampling
    ("sample: no --workdir", SAMPLE, "--workdir is required"),
    ("sample: no such workdir", [*SAMPLE, "--workdir={fresh}"], "no such directory"),
    ("sample: --num_samples given text", [*SAMPLE, "--workdir={run}", "--num_samples=many"],
     "--num_samples=many"),
    ("sample: steps do not divide the length", [*SAMPLE, "--workdir={run}", "--steps=5"],
     "--steps=5: must divide model.length=32"),
    ("sample: no samples", [*SAMPLE, "--workdir={run}", "--num_samples=0"],
     "--num_samples=0"),
    ("sample: no such step", [*SAMPLE, "--workdir={run}", "--step=999"],
     "no checkpoint for step 999"),
    ("sample: truncated checkpoint", [*SAMPLE, "--workdir={damaged}"], "no checkpoint in"),
    # other entry points
    ("evaluate: no such workdir", ["pgm_jax.evaluate", "--workdir={fresh}"], "no such directory"),
    ("convert: checkpoint file missing",
     ["pgm_jax.convert", "--checkpoint={files}/missing.ckpt", "--workdir={fresh}"],
     "missing.ckpt: no such file"),
]

FILES = {
    "syntax.py": "def get_config(:\n",
    "typo.py": ("from configs import demo\n\ndef get_config():\n    c = demo.get_config()\n"
                "    c.train.batch_sise = 8\n    return c\n"),
    "wrong_type.py": ("from configs import demo\n\ndef get_config():\n    c = demo.get_config()\n"
                      "    c.train.keep_checkpoints = 'three'\n    return c\n"),
    "bad.jsonl": '{"text": "a fine first document"}\n{"text": unquoted}\n',
}


def snapshot(path: str) -> dict:
    """Every entry under `path` (or the file `path`) with its size and modification time."""
    if not os.path.isdir(path):
        return {".": (os.path.getsize(path), os.stat(path).st_mtime_ns)} if os.path.exists(
            path) else {}
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every row (three at a time); id -> (CompletedProcess, workdir, before, after)."""
    base = tmp_path_factory.mktemp("bad_input")
    files = base / "files"
    files.mkdir()
    for name, text in FILES.items():
        (files / name).write_text(text)
    (files / "latin1.txt").write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 50)
    trained = str(base / "trained")
    loop.train(tiny(num_steps=2), trained)
    damaged = str(base / "damaged")
    shutil.copytree(trained, damaged)
    truncate_largest(os.path.join(damaged, "checkpoints", "2"))

    def run(index: int, argv: list[str]):
        row_dir = base / f"row{index}"
        row_dir.mkdir()
        places = {"fresh": str(row_dir / "new" / "run"), "files": str(files)}
        for name, source in (("run", trained), ("damaged", damaged)):
            places[name] = str(row_dir / name)
            shutil.copytree(source, places[name])
        args = [a.format(**places) for a in argv]
        workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")),
                       places["fresh"])
        watched = os.path.dirname(places["fresh"]) if workdir == places["fresh"] else workdir
        before = snapshot(watched)
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=600)
        return proc, watched, before, snapshot(watched)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, i, argv) for i, (name, argv, _) in enumerate(ROWS)}
        return {name: f.result() for name, f in futures.items()}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_the_table_has_at_least_20_malformed_inputs():
    assert len(ROWS) >= 20 and len({name for name, _, _ in ROWS}) == len(ROWS)


def test_validate_checks_types_of_a_rebuilt_section():
    """ml_collections type-checks assignments to existing keys; a config that rebuilds a whole
    section bypasses that, and validation still names the key."""
    config = tiny()
    config.train = ConfigDict({**config.train.to_dict(), "keep_checkpoints": "three"})
    with pytest.raises(ConfigError, match=r"^config.train.keep_checkpoints='three': must be of "
                                          "type int"):
        validate(config)
    config.train = ConfigDict({**tiny().train.to_dict(), "dropout": 0.1})
    with pytest.raises(ConfigError, match=r"^config.train.dropout: unknown key"):
        validate(config)


@pytest.mark.parametrize("name,argv,expected", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(results, name, argv, expected):
    proc, watched, before, after = results[name]
    detail = f"{name}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        error_line(proc.stderr)], detail
    assert error_line(proc.stderr).startswith("error: ") and expected in error_line(proc.stderr), (
        detail)
    assert proc.stdout == ""
    assert after == before, f"{watched} changed: {set(after.items()) ^ set(before.items())}"

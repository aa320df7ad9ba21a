"""Checkpointing: the only module that imports orbax.

A checkpoint step directory holds four items:
  params  raw training weights (pure dict),
  ema     EMA weights (what sampling and evaluation restore),
  opt     {step, opt_state, key} (absent in converted checkpoints),
  data    each process's data-iterator state (`process_<i>-of-<n>.json`, grain's layout), so
          a resumed run sees exactly the next batch,
and `files.json`, the size of every file, written once the (asynchronous) save has finished.
Saves are asynchronous; restores take an abstract target whose leaves carry the *current*
mesh's shardings, so a checkpoint restores onto any mesh and any number of devices.

Integrity. orbax commits a step by renaming its temporary directory, so a process killed while
saving leaves no step behind. A step damaged later fails the `files.json` check (a file
missing or not at its recorded size) or, for a step without `files.json`, its restore reports
the data itself unreadable (a file missing, truncated or undecodable: `CheckpointDamaged`).
Only then does `restore_newest` fall back to the newest step that restores, with a warning
naming the damaged one, and move damaged newer steps aside (`<step>.damaged`) so the run can
save those steps again. Any other restore failure (an I/O error, running out of memory, a
target that does not fit the saved arrays) is not damage: it raises `CheckpointError` and
changes nothing on disk, so a transient error never rolls a run back.

Retention keeps the newest `keep` *verified* steps (saved to completion by this code, every
file of `files.json` present at its size) and everything newer; damaged or unverified steps
never count towards `keep`, so the newest intact checkpoint is never deleted.

Changing the process count. On the same topology a resumed run repeats the uninterrupted one
exactly. params, ema and opt are global arrays: they restore exactly onto any mesh or process
count, and the losses then match up to floating-point summation order (the reductions are
split differently). The data position carries over when every process saved the same one
(global batches of fixed-length rows: with an unchanged global batch size the resumed run
reads the same global batches, each process taking its new share of rows); packed or wrapped
streams keep per-process positions and resume only on the same process count (see
`DataStateHandler`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

ITEMS = ("params", "ema", "opt", "data", "teacher")  # teacher: SDTT distillation runs
MANIFEST = "files.json"


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint; the message names the directory and step."""


class CheckpointDamaged(CheckpointError):
    """An integrity failure: a file of the step is missing, not at its recorded size, or
    unreadable as data. The only restore failure that `restore_newest` falls back from."""


# tensorstore status codes (the prefix of its error messages) that mean the stored bytes are
# missing or do not decode: a truncated chunk reads OUT_OF_RANGE, a deleted one NOT_FOUND.
# Every other code (UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL, ...) may be transient.
_DAMAGE_STATUS = re.compile(r"\b(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND):")


def _is_damage(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) says the stored data is missing
    or does not decode, as opposed to a failure of the machine or of the restore target."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, json.JSONDecodeError)):
            return True
        if _DAMAGE_STATUS.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings` (a matching tree of NamedShardings)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class DataStateHandler(ocp.CheckpointHandler):
    """The `data` item: every process writes its own iterator state (a JSON dict) to
    `process_<i>-of-<n>.json`, the file layout of grain's checkpoint handler.

    Restore reads this process's file. A checkpoint written by another number of processes
    restores too when all its processes saved the same state, which is the case for global
    batches of fixed-length rows (`pgm_jax.data.pipeline`); packed or wrapped streams have
    per-process positions and need the same process count.
    """

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        (directory / _data_file(jax.process_index(), jax.process_count())).write_text(
            json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> dict:
        own = directory / _data_file(jax.process_index(), jax.process_count())
        if own.exists():
            return json.loads(own.read_text())
        saved = [json.loads(p.read_text()) for p in sorted(directory.glob("process_*-of-*.json"))]
        if saved and all(state == saved[0] for state in saved):
            return saved[0]
        raise ValueError(
            f"{directory} holds the data positions of {len(saved)} processes, which differ "
            f"(packed or wrapped data): resume with {len(saved)} processes")

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


def _data_file(process_index: int, process_count: int) -> str:
    return f"process_{process_index}-of-{process_count}.json"


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: dict


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class Checkpointer:
    """Periodic, asynchronous checkpoints of a training run, keeping the last `keep` intact."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # retention is `prune`, which skips damaged steps
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._unverified: list[int] = []  # saved by this process, files.json not yet written

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def all_steps(self) -> list[int]:
        """Every committed step, oldest first (damaged ones included)."""
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest step whose files are all present at their saved sizes (see `problem`)."""
        for step in reversed(self.all_steps()):
            problem = self.problem(step)
            if problem is None:
                return step
            logging.warning("checkpoint step %d in %s is damaged (%s): skipping it", step,
                            self.directory, problem)
        return None

    def problem(self, step: int) -> str | None:
        """Why the checkpoint at `step` is damaged (a file missing or truncated), else None.

        Steps without `files.json` (older runs, converted checkpoints, a process killed right
        after the commit) are not checked here: their restore is the check.
        """
        path = self.step_dir(step)
        manifest = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest):
            return None
        try:
            with open(manifest) as f:
                sizes = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{MANIFEST} is unreadable ({type(e).__name__})"
        for name, size in sizes.items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                return f"{name} is missing"
            if os.path.getsize(file) != size:
                return f"{name} has {os.path.getsize(file)} bytes, saved with {size}"
        return None

    def verified(self, step: int) -> bool:
        """Saved to completion (files.json written) and undamaged since."""
        return os.path.exists(os.path.join(self.step_dir(step), MANIFEST)) and (
            self.problem(step) is None)

    def save(self, step: int, *, params, ema, opt: dict | None = None,
             data: dict | None = None, teacher: dict | None = None) -> None:
        """Starts an asynchronous save of `step` (returns once the arrays are copied).

        The previous save is finished first, then verified and pruned (see `prune`).
        """
        self.wait()
        items = {"params": ocp.args.StandardSave(params), "ema": ocp.args.StandardSave(ema)}
        if opt is not None:
            items["opt"] = ocp.args.StandardSave(opt)
        if data is not None:
            items["data"] = DataStateSave(data)
        if teacher is not None:
            items["teacher"] = ocp.args.StandardSave(teacher)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        self._unverified.append(step)

    def restore(self, step: int | None, targets: dict[str, Any]) -> dict[str, Any]:
        """Restores the named items at `step` (default latest) onto the targets' shardings.

        targets: item name -> abstract pytree (see `abstract`), or None for the data item.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
            )
        problem = self.problem(step)
        if problem is not None:
            raise CheckpointDamaged(f"checkpoint step {step} in {self.directory} is damaged: "
                                    f"{problem}")
        args = {
            name: DataStateRestore() if target is None else ocp.args.StandardRestore(target)
            for name, target in targets.items()
        }
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # tensorstore reports unreadable data as a bare Exception
            first = str(e).splitlines()[0] if str(e) else ""
            if _is_damage(e):
                raise CheckpointDamaged(
                    f"checkpoint step {step} in {self.directory} is damaged: "
                    f"{type(e).__name__}: {first[:300]}") from e
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory} (nothing was changed on "
                f"disk; fix the cause and rerun): {type(e).__name__}: {first[:300]}"
            ) from e
        return {name: restored[name] for name in targets}

    def restore_newest(self, targets: Callable[[int], dict[str, Any]]
                       ) -> tuple[int, dict[str, Any]] | None:
        """(step, items) of the newest checkpoint that restores; None if there is none.

        targets: step -> the `restore` targets for that step. Damaged steps
        (`CheckpointDamaged`) are skipped with a warning and, once an older step has restored,
        moved aside to `<step>.damaged` (unless read-only) so that the resumed run can save
        those steps again. Any other failure raises CheckpointError at once, with nothing
        moved; so does a directory where no step restores.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored = self.restore(step, targets(step))
            except CheckpointDamaged as e:
                logging.warning("%s: falling back to an older checkpoint", e)
                damaged.append((step, str(e)))
                continue
            for bad, _ in damaged:
                self._move_aside(bad)
            return step, restored
        if damaged:
            newer = f"; steps {[s for s, _ in damaged[:-1]]} fail too" if len(damaged) > 1 else ""
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores ({damaged[-1][1]}{newer}): move "
                "the directory away to start the run over"
            )
        return None

    def _move_aside(self, step: int) -> None:
        if self.read_only:
            return
        if jax.process_index() == 0:
            target = self.step_dir(step) + ".damaged"
            n = 1
            while os.path.exists(target):
                n += 1
                target = f"{self.step_dir(step)}.damaged{n}"
            os.rename(self.step_dir(step), target)
            logging.warning("moved damaged checkpoint step %d to %s", step, target)
        self._sync("pgm_jax_checkpoint_move_aside")
        self._mgr.reload()

    def prune(self) -> list[int]:
        """Deletes the steps older than the `keep`-th newest verified one; returns them.

        Damaged and unverified steps never count towards `keep`, so the newest verified
        checkpoint survives any number of newer damaged ones.
        """
        steps = self.all_steps()
        verified = [s for s in steps if self.verified(s)]
        if self.read_only or len(verified) < self.keep:
            return []
        doomed = [s for s in steps if s < verified[-self.keep]]
        for s in doomed:
            self._mgr.delete(s)
        return doomed

    def item_names(self, step: int) -> list[str]:
        """The items present in the checkpoint at `step`."""
        path = self.step_dir(step)
        return [n for n in ITEMS if os.path.isdir(os.path.join(path, n))]

    def reached_preemption(self, step: int) -> bool:
        """Multi-process runs: True at the step all processes agreed to save at after one of
        them received a preemption notice (JAX's preemption sync point)."""
        return self._mgr.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the pending save is committed, then verifies it and prunes."""
        self._mgr.wait_until_finished()
        if not self._unverified:
            return
        committed = set(self._mgr.all_steps())
        if jax.process_index() == 0:
            for step in self._unverified:
                if step in committed:
                    _write_manifest(self.step_dir(step))
        self._unverified = []
        self._sync("pgm_jax_checkpoint_verified")
        self.prune()

    def close(self) -> None:
        self.wait()
        self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _sync(name: str) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(name)


def _write_manifest(path: str) -> None:
    """Records the size of every file under the step directory `path` (atomically)."""
    sizes = {}
    for root, _, files in os.walk(path):
        for name in files:
            if not name.startswith(MANIFEST):
                full = os.path.join(root, name)
                sizes[os.path.relpath(full, path)] = os.path.getsize(full)
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": dict(sorted(sizes.items()))}, f, indent=0)
    os.replace(tmp, os.path.join(path, MANIFEST))

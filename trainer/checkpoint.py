"""Checkpoints with orbax: params, optimizer state and a JSON record, per stage.

Layout under ``checkpoint.dir``::

    <stage>/steps/<step>/{params,opt_state,meta}   the last ``keep`` checkpoints (pruned)
    <stage>/final/<steps>/{params,opt_state,meta}  the stage's final checkpoint (never pruned)

Orbax writes each checkpoint into a temporary directory and renames it once complete, so a
kill mid-save leaves the previous checkpoint intact. ``meta`` (JSON) records the step, the
stage, the reader's position (the next step: batches are a pure function of it), the RNG
key, the config, the code version and the lineage: every stage's manifest (path, sha256,
tokenizer and VQGAN ids) that the weights were trained on, inherited along ``init_from``.

Step checkpoints are saved asynchronously: the training loop waits only while orbax copies the
arrays to host memory; TensorStore writes them on a background thread. :meth:`StageCheckpoints.check`
(called every step, never waiting on a save in progress) turns a failed background write into
one :class:`CheckpointError` line naming the checkpoint's path, at once, instead of at the next
save (orbax's own tracebacks for it, one per thread, are kept off the console).

Restoring takes an abstract tree (shapes, dtypes and shardings of the *current* mesh), so a
checkpoint written on one mesh restores onto another: the sequence axis grows per stage.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lwmkit.runtime.progress import describe_io_failure

ITEMS = ("params", "opt_state", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written: one line with its path and the first line of the cause."""


def _failed(path: str, err: BaseException) -> CheckpointError:
    # an OS error behind orbax/TensorStore (a full disk, a read-only folder) as "writing PATH: why"
    cause = describe_io_failure(err) or (str(err).strip().splitlines() or [type(err).__name__])[0]
    failure = CheckpointError(f"checkpoint save to {path} failed: {cause[:400]}")
    failure.original = err  # raised "from None" (no orbax traceback on the console); kept for the log
    return failure


def _quiet_closed_loop_callbacks() -> None:
    """When a background write fails, orbax closes its event loop while other TensorStore writes
    are in flight; each of their completion callbacks then reports "Event loop is closed" as an
    unraisable exception (one traceback per array). They echo the failure that :meth:`check`
    reports; every other unraisable exception still goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_lwmkit_quiet", False):
        return

    def hook(unraisable) -> None:
        if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook._lwmkit_quiet = True
    sys.unraisablehook = hook


class _NoOrbaxTracebacks(logging.Filter):
    """Orbax logs a failed background write once per thread, each with its traceback (~440
    lines for one full disk); the run reports it as one CheckpointError line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


_QUIET = _NoOrbaxTracebacks()


@functools.cache
def code_version() -> str:
    """``lwmkit <version>`` plus the git commit (and ``-dirty``) when run from a checkout."""
    from lwmkit import __version__

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return f"lwmkit {__version__} ({commit[:12]}{'-dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        return f"lwmkit {__version__}"


def _manager(path: str, keep: int | None, async_save: bool, save_gb: float = 96) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save
    )
    handlers = {
        "params": ocp.StandardCheckpointHandler(save_concurrent_gb=save_gb),  # type: ignore[arg-type]
        "opt_state": ocp.StandardCheckpointHandler(save_concurrent_gb=save_gb),  # type: ignore[arg-type]
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


@dataclass
class Restored:
    params: Any
    opt_state: Any | None
    meta: dict[str, Any]


def absolute(path: str) -> str:
    """Orbax refuses relative paths: resolve local ones against the working directory."""
    import os

    return path if "://" in path else os.path.abspath(path)


class StageCheckpoints:
    """The step and final checkpoints of one stage."""

    def __init__(self, root: str, stage: str, *, keep: int, async_save: bool = True, final_save_gb: float = 96):
        """``final_save_gb``: at most this many GB of the final checkpoint in flight to storage at once
        (orbax's ``save_concurrent_gb``, default 96; at least the largest array). A smaller value trades
        write parallelism for host memory: ``convert import`` sets it from the model."""
        self.dir = f"{absolute(root).rstrip('/')}/{stage}"
        self.steps = _manager(f"{self.dir}/steps", keep, async_save)
        self.final = _manager(f"{self.dir}/final", 1, False, final_save_gb)
        self.pending: str | None = None  # the step checkpoint being written in the background
        self.blocked_seconds = 0.0  # how long the last save() held the training loop
        logging.getLogger("absl").addFilter(_QUIET)  # a Filter added twice is kept once
        _quiet_closed_loop_callbacks()

    def latest_step(self) -> int | None:
        return self.steps.latest_step()

    def is_final(self) -> bool:
        return self.final.latest_step() is not None

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any], *, final: bool = False) -> None:
        """Save ``step``; a step checkpoint returns once its arrays are on the host, a final one
        once everything is written. Raises :class:`CheckpointError` (one line) on failure."""
        self.check()  # a failed earlier write is reported as itself, not as this save's
        manager = self.final if final else self.steps
        path = f"{manager.directory}/{step}"
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        t0 = time.perf_counter()
        try:
            manager.save(step, args=args, force=True)
            if final:
                self.steps.wait_until_finished()
                manager.wait_until_finished()
        except Exception as err:
            raise _failed(path, err) from None
        self.blocked_seconds = time.perf_counter() - t0
        self.pending = None if final else path

    def check(self) -> None:
        """Raise :class:`CheckpointError` now if the background save failed; never waits for
        one still writing."""
        if self.pending is None:
            return
        try:
            self.steps.check_for_errors()
            if not self.steps.is_saving_in_progress():
                self.steps.wait_until_finished()  # returns at once; re-raises a failed write
                self.pending = None
        except Exception as err:
            path, self.pending = self.pending, None
            raise _failed(path, err) from None

    def restore(self, abstract_params: Any, abstract_opt: Any | None, *, final: bool = False, step: int | None = None) -> Restored:
        manager = self.final if final else self.steps
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {manager.directory}")
        return restore_from(manager, step, abstract_params, abstract_opt)

    def read_meta(self, *, final: bool = False) -> dict[str, Any] | None:
        manager = self.final if final else self.steps
        step = manager.latest_step()
        if step is None:
            return None
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        try:
            self.steps.wait_until_finished()
            self.final.wait_until_finished()
        except Exception as err:
            raise _failed(self.pending or self.dir, err) from None

    def close(self) -> None:
        self.steps.close()
        self.final.close()


def restore_from(manager: ocp.CheckpointManager, step: int, abstract_params: Any, abstract_opt: Any | None) -> Restored:
    items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
    if abstract_opt is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt)
    got = manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(got["params"], got.get("opt_state") if abstract_opt is not None else None, got["meta"])


def open_checkpoint(path: str) -> tuple[ocp.CheckpointManager, int]:
    """A checkpoint named by path: a stage folder (its final, else its latest step), a
    ``final``/``steps`` folder (its latest step), or one step folder."""
    p = path.rstrip("/")
    candidates = [f"{p}/final", f"{p}/steps", p]
    if os.path.basename(p).isdigit():
        manager = _manager(os.path.dirname(p), None, False)
        return manager, int(os.path.basename(p))
    for c in candidates:
        if not os.path.isdir(c) and "://" not in c:
            continue
        manager = _manager(c, None, False)
        step = manager.latest_step()
        if step is not None:
            return manager, step
    raise FileNotFoundError(f"no lwmkit checkpoint at {path} (expected <stage>/final/<step>/ or <stage>/steps/<step>/)")


def params_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The stored params tree's shapes and dtypes (nothing is read but metadata)."""
    tree = manager.item_metadata(step)["params"]
    tree = getattr(tree, "tree", tree)
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

"""Resumable training: numbered checkpoints in a work folder, guarded by a manifest of the arguments.

A checkpoint is a folder `checkpoint-NNNNNN/` (numbered in the order written) holding `tensors.safetensors` (weights, optimizer
moments, RNG states) and `state.json` (counters, scheduler, scalars). It is written under a
`.tmp` name and renamed into place, so a kill at any point leaves the previous checkpoint whole;
older ones are removed afterwards. Nothing is pickled: optimizer state is split into tensors and
JSON. The manifest (`open_run`, also guarding `generate`'s journal) makes a rerun with other arguments or
data fail in one line instead of silently mixing two runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from promptrec.data import DataError, atomic_write, ensure_writable

MANIFEST, STATE, TENSORS = "manifest.json", "state.json", "tensors.safetensors"
TRAIN_STATE = "train_state"  # beside a fitted model: its run's last checkpoint, kept so `train --from` can train further
_NUMBERED = re.compile(r"^checkpoint-(\d{6})$")


def open_run(folder: Path, manifest: dict[str, Any], kind: str = "training run",
             added: dict[str, Any] | None = None) -> None:
    """Create `folder` with `manifest`, or check that the unfinished run there had the same one
    (`kind` names the run in the error: "training run", or "run" for generation; `added` as in `check_run`)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        check_run(folder, manifest, f"an unfinished {kind}", "re-run with the same arguments to continue it, or "
                  "delete the folder (or choose another output folder) to start over", added)
        return
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / MANIFEST) as handle:
        handle.write(json.dumps(manifest, indent=1))


def check_run(folder: Path, manifest: dict[str, Any], what: str, remedy: str,
              added: dict[str, Any] | None = None) -> None:
    """One-line error (`what` the run is, e.g. "an unfinished training run", then `remedy`) unless the run saved in
    `folder` had `manifest`; `added` maps options newer than some saved runs to how runs without them trained."""
    path = Path(folder) / MANIFEST
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no {MANIFEST}: not the state of a training run") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: unreadable manifest; delete {folder} to start over") from None
    old = {**(added or {}), **old}
    manifest = json.loads(json.dumps(manifest))  # tuples become lists, as they were read back
    changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if changed:
        key = changed[0]
        raise DataError(f"{folder}: {what} with other arguments ({key}: {old.get(key)!r}, now "
                        f"{manifest.get(key)!r}); {remedy}")


def _numbers(folder: Path) -> list[int]:
    """Numbers of the complete checkpoints in `folder`, ascending."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name)) and p.is_dir())


def has_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a complete checkpoint."""
    return bool(_numbers(Path(folder)))


def latest(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tensors, state) of the newest complete checkpoint in `folder`; None when there is none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    numbers = _numbers(Path(folder))
    if not numbers:
        return None
    where = Path(folder) / f"checkpoint-{numbers[-1]:06d}"
    try:
        return load_file(str(where / TENSORS)), json.loads((where / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, SafetensorError) as err:
        raise DataError(f"{where}: unreadable checkpoint ({str(err).splitlines()[0]}); delete {folder} to start over") from None


def _fsynced(path: Path) -> None:
    """Flush `path` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(folder: Path, tensors: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write the next checkpoint atomically (a staged folder renamed into place); drop the older ones."""
    from safetensors.torch import save_file

    folder = Path(folder)
    older = _numbers(folder)
    final = folder / f"checkpoint-{(older[-1] + 1 if older else 0):06d}"
    stage = folder / f"{final.name}.tmp"
    ensure_writable(stage / TENSORS)  # creates the staging folder; a full disk fails here in one line
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(stage / TENSORS))
    _fsynced(stage / TENSORS)
    with open(stage / STATE, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(stage, final)
    _fsynced(folder)
    for number in older:
        shutil.rmtree(folder / f"checkpoint-{number:06d}", ignore_errors=True)
    for leftover in folder.glob("checkpoint-*.tmp"):  # stages of checkpoints killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def remove(folder: Path) -> None:
    """Delete the work folder of a finished run."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


def move(folder: Path, target: Path) -> None:
    """Move a finished run's work folder (manifest and newest checkpoint) to `target`, replacing what was there
    (renames only: a kill midway leaves each state whole, the replaced one as TARGET.old)."""
    old = target.with_name(f"{target.name}.old")
    remove(old)
    if target.exists():
        os.rename(target, old)
    os.rename(folder, target)
    remove(old)


def optimizer_parts(optimizer, prefix: str = "optimizer/") -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer's state_dict split into tensors (named `prefix<param>/<key>`) and JSON-ready rest."""
    torch = _torch()
    full = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in full["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def load_optimizer(optimizer, tensors: dict[str, Any], parts: dict[str, Any], prefix: str = "optimizer/") -> None:
    """Restore an optimizer from `optimizer_parts` output (tensors as read back from safetensors)."""
    state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in parts["scalars"].items()}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": parts["param_groups"]})


def rng_tensors(prefix: str = "rng/") -> dict[str, Any]:
    """torch's CPU and CUDA generator states (what dropout draws from) as uint8 tensors."""
    torch = _torch()
    states = {f"{prefix}cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"{prefix}cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng(tensors: dict[str, Any], prefix: str = "rng/") -> None:
    """Set torch's generators back to `rng_tensors` output; CUDA states only on the same device count."""
    torch = _torch()
    torch.set_rng_state(tensors[f"{prefix}cpu"])
    cuda = [tensors[f"{prefix}cuda/{i}"] for i in range(sum(k.startswith(f"{prefix}cuda/") for k in tensors))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _torch():
    import torch

    return torch

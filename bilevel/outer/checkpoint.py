"""Atomic, checksummed checkpoints of an outer run, and their restoration into a fresh state.

A checkpoint holds everything that decides the rest of a trajectory: θ, y, the step counter,
every value of ``state.extra`` (tensors, numbers, ``torch.Generator`` states, ``state_dict()``
of objects such as optimizers or samplers, nested in lists / dicts), the global torch (CPU and
CUDA), numpy and Python RNG states, the metrics history so far, the best iterate and the
run's status. Resuming is ``method.init(problem)`` followed by :func:`restore_state`, which
loads the saved values into that fresh state *in place* (tensors are copied into the existing
ones, so an optimizer that holds θ keeps holding it; generators get ``set_state``; objects get
``load_state_dict``): the continued trajectory is bit-identical to an uninterrupted one.

On disk (``path`` and ``path + ".prev"``): an 8-byte magic, the SHA-256 of the payload (32
bytes), then the payload (``torch.save`` bytes). :func:`save_checkpoint` writes a temporary
file, fsyncs it, moves the previous checkpoint to ``.prev`` and renames the new one into place
(``os.replace``, atomic on POSIX): a crash at any point leaves at least one complete
checkpoint. :func:`load_checkpoint` verifies the checksum of the latest one and, if it is
missing, truncated or corrupt, falls back to ``.prev`` with a :class:`CheckpointWarning`.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # base.py imports this module
    from bilevel.outer.base import OuterState

MAGIC = b"BLVCKPT1"
_DIGEST = 32  # bytes of a SHA-256 digest


class CheckpointError(RuntimeError):
    """No usable checkpoint (every file missing or corrupt), or one that belongs to another
    run (different method, shapes or configuration). Fix: resume with the configuration that
    wrote it, or start afresh (``resume=False``) in a new run directory."""


class CheckpointWarning(UserWarning):
    """The latest checkpoint was unusable and the previous one was loaded (some steps are
    recomputed), or ``resume`` was asked for where no checkpoint exists yet."""


@dataclass
class RunRecord:
    """What :func:`run_outer <bilevel.outer.base.run_outer>` keeps besides the method state.

    Attributes:
        history: one metrics row per step so far.
        best_value, best_theta, best_y: the best iterate (lowest finite outer value).
        status, message: ``"running"`` until the loop ends, then its final status.
        elapsed_s: wall time spent in the loop so far (``time_s`` continues from it).
        error: the exception that ended the loop, if any (not saved).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float = float("inf")
    best_theta: Tensor | None = None
    best_y: Tensor | None = None
    status: str = "running"
    message: str = ""
    elapsed_s: float = 0.0
    error: BaseException | None = None


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint before the latest one is kept: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def remove_checkpoints(path: str | os.PathLike[str]) -> None:
    """Delete the latest and previous checkpoint at ``path`` (a fresh run must not fall back
    on a stale one)."""
    for p in (Path(path), previous_path(path)):
        p.unlink(missing_ok=True)


# -- saving ------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike[str], state: OuterState, record: RunRecord, *,
                    tag: str = "") -> None:
    """Write ``state`` and ``record`` atomically to ``path``; the former latest becomes
    ``<path>.prev``.

    Args:
        path: checkpoint file.
        state: the outer method's state after its last step.
        record: history, best iterate, status.
        tag: a fingerprint of the run (method name, configuration); :func:`restore_state`
            refuses a checkpoint whose tag differs from the one it is given.
    """
    payload = {
        "tag": tag,
        "step": state.step,
        "theta": state.theta.detach().cpu().clone(),
        "y": state.y.detach().cpu().clone(),
        "extra": {k: _pack(v) for k, v in state.extra.items()},
        "rng": _global_rng_states(),
        "record": {
            "history": record.history,
            "best_value": record.best_value,
            "best_theta": None if record.best_theta is None else record.best_theta.cpu(),
            "best_y": None if record.best_y is None else record.best_y.cpu(),
            "status": record.status,
            "message": record.message,
            "elapsed_s": record.elapsed_s,
        },
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(MAGIC + hashlib.sha256(data).digest() + data)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def _pack(value: Any) -> Any:
    """A saveable form of one ``state.extra`` value (tagged where restoring needs to know)."""
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if hasattr(value, "state_dict") and callable(value.state_dict):
        return {"__state_dict__": value.state_dict()}
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_pack(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot checkpoint a state.extra value of type {type(value).__name__}: store tensors, "
        "numbers, strings, torch.Generator, objects with state_dict()/load_state_dict(), or "
        "lists/dicts of those"
    )


def _global_rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 — the global state is what we restore
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


# -- loading -----------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The payload of the latest valid checkpoint at ``path``.

    Raises:
        CheckpointError: neither ``path`` nor ``<path>.prev`` is a complete checkpoint.

    Warns:
        CheckpointWarning: the latest one is missing or corrupt and ``.prev`` was loaded.
    """
    errors = []
    for i, candidate in enumerate((Path(path), previous_path(path))):
        try:
            payload = _read(candidate)
        except (OSError, ValueError) as exc:
            errors.append(f"{candidate}: {exc}")
            continue
        if i > 0:
            warnings.warn(
                f"checkpoint {path} is unusable ({errors[0]}); resuming from the previous one "
                f"at step {payload['step']}", CheckpointWarning, stacklevel=2,
            )
        return payload
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors)
                          + ". Start afresh with resume=False.")


def _read(path: Path) -> dict[str, Any]:
    blob = path.read_bytes()
    if len(blob) < len(MAGIC) + _DIGEST or not blob.startswith(MAGIC):
        raise ValueError("not a bilevel checkpoint (bad header or truncated)")
    digest, data = blob[len(MAGIC):len(MAGIC) + _DIGEST], blob[len(MAGIC) + _DIGEST:]
    if hashlib.sha256(data).digest() != digest:
        raise ValueError("checksum mismatch (partial or corrupted write)")
    # weights_only: loading a checkpoint never executes code from the file.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def restore_state(state: OuterState, payload: dict[str, Any], *, tag: str = "") -> RunRecord:
    """Load a checkpoint payload into the fresh ``state`` of ``method.init(problem)``, restore
    the global RNG states, and return the run record (history, best iterate, status).

    Raises:
        CheckpointError: the tag, θ's shape or the keys of ``state.extra`` differ from the
            checkpoint's (it was written by another method or configuration).
    """
    if payload["tag"] != tag:
        raise CheckpointError(
            "the checkpoint was written by a different run configuration; resume with the "
            f"configuration that wrote it or start afresh.\n  saved: {payload['tag']}\n  now:   "
            f"{tag}"
        )
    if tuple(payload["theta"].shape) != tuple(state.theta.shape):
        raise CheckpointError(f"checkpoint θ has shape {tuple(payload['theta'].shape)}, the "
                              f"problem's θ {tuple(state.theta.shape)}")
    if set(payload["extra"]) != set(state.extra):
        raise CheckpointError(f"checkpoint state keys {sorted(payload['extra'])} differ from "
                              f"the method's {sorted(state.extra)}: written by another method?")
    device = state.theta.device
    _copy_into(state.theta, payload["theta"])
    state.y = _assign_tensor(state.y, payload["y"], device)
    state.step = int(payload["step"])
    for key, saved in payload["extra"].items():
        state.extra[key] = _unpack(state.extra[key], saved, device)
    _set_global_rng_states(payload["rng"])
    rec = payload["record"]
    return RunRecord(
        history=list(rec["history"]),
        best_value=float(rec["best_value"]),
        best_theta=None if rec["best_theta"] is None else rec["best_theta"].to(device),
        best_y=None if rec["best_y"] is None else rec["best_y"].to(device),
        status=rec["status"],
        message=rec["message"],
        elapsed_s=float(rec["elapsed_s"]),
    )


def _copy_into(target: Tensor, saved: Tensor) -> None:
    with torch.no_grad():
        target.copy_(saved)


def _assign_tensor(fresh: Any, saved: Tensor, device: torch.device) -> Tensor:
    """Copy in place when shapes and dtypes agree (references held elsewhere stay valid);
    otherwise the saved tensor on the run's device."""
    if isinstance(fresh, Tensor) and fresh.shape == saved.shape and fresh.dtype == saved.dtype:
        _copy_into(fresh, saved)
        return fresh
    target_device = fresh.device if isinstance(fresh, Tensor) else device
    return saved.to(target_device)


def _unpack(fresh: Any, saved: Any, device: torch.device) -> Any:
    if isinstance(saved, dict) and "__generator__" in saved:
        if not isinstance(fresh, torch.Generator):
            raise CheckpointError(f"checkpoint holds a generator where the method has "
                                  f"{type(fresh).__name__}")
        fresh.set_state(saved["__generator__"])
        return fresh
    if isinstance(saved, dict) and "__state_dict__" in saved:
        if not hasattr(fresh, "load_state_dict"):
            raise CheckpointError(f"checkpoint holds a state_dict where the method has "
                                  f"{type(fresh).__name__} (no load_state_dict)")
        fresh.load_state_dict(saved["__state_dict__"])
        return fresh
    if isinstance(saved, Tensor):
        return _assign_tensor(fresh, saved, device)
    if isinstance(saved, dict):
        fresh_dict = fresh if isinstance(fresh, dict) else {}
        return {k: _unpack(fresh_dict.get(k), v, device) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        fresh_seq = list(fresh) if isinstance(fresh, (list, tuple)) else []
        fresh_seq += [None] * (len(saved) - len(fresh_seq))
        return type(saved)(_unpack(f, s, device) for f, s in zip(fresh_seq, saved, strict=False))
    return saved


def _set_global_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy(), *rest))  # noqa: NPY002
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples; the loader may hand lists back."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value

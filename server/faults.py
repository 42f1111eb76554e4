"""Test-only fault injection, off by default: `SM1_INJECT_FAULTS` (or `Settings.inject_faults`) names faults
as `KIND@N`, comma-separated; the N-th call of that kind (1-based) raises (name a kind again for more calls).
Never set it in production.

    step_error@20    the 20th batched model step raises RuntimeError (a failing kernel, a bad state row)
    prefill_error@2  the 2nd read of prompt/notes chunks raises RuntimeError (one read takes one session's
                     chunk, or several sessions' chunks of one length when the tick's budget allows)
    admit_oom@2      the 2nd admit raises torch.OutOfMemoryError after taking its slot (CUDA OOM, on any device)

tests/reliability sets it on a real `sm1-server` to check that a fault fails only what it touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from sm1.engine import Engine

log = logging.getLogger("sm1.server")


def _step_error() -> Exception:
    return RuntimeError("injected fault: the model step failed")


def _prefill_error() -> Exception:
    return RuntimeError("injected fault: the model failed reading a prompt")


def _admit_oom() -> Exception:
    return torch.OutOfMemoryError("injected fault: CUDA out of memory while admitting a session")


# kind -> (the engine attribute whose call counts, the exception its N-th call raises)
FAULTS: dict[str, tuple[str, Callable[[], Exception]]] = {
    "step_error": ("_step", _step_error),
    "prefill_error": ("_read", _prefill_error),
    "admit_oom": ("_zero", _admit_oom),  # _zero runs in admit only, after the slot is taken
}


def parse(spec: str) -> dict[str, set[int]]:
    """'step_error@20,admit_oom@2,admit_oom@3' -> {'step_error': {20}, 'admit_oom': {2, 3}}."""
    faults: dict[str, set[int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, n = item.partition("@")
        if kind not in FAULTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"inject_faults: {item!r} is not KIND@N with KIND one of {', '.join(FAULTS)}")
        faults.setdefault(kind, set()).add(int(n))
    return faults


def install(engine: Engine, spec: str) -> None:
    """Wrap the engine's attributes named by `spec` so that their N-th call raises."""
    for kind, calls in parse(spec).items():
        attr, make = FAULTS[kind]
        setattr(engine, attr, _raise_on_calls(getattr(engine, attr), calls, make))
        log.warning("TEST ONLY: fault %s injected on call(s) %s", kind, sorted(calls))


def _raise_on_calls(fn: Callable[..., Any], failing: set[int], make: Callable[[], Exception]) -> Callable[..., Any]:
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls in failing:
            raise make()
        return fn(*args, **kwargs)

    return wrapper

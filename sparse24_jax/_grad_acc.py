"""Receipts for running sums added by a backward pass (gradient accumulation in the GEMM).

An operation handed the running sum of its weight's gradient (``grad_acc=``)
adds it in its backward rule. JAX runs no backward rule for an operation whose
output does not reach the differentiated value, and then that weight's
cotangent is zero: the sum would be lost. So each such operation carries a
:class:`Receipt` (a static argument of its custom_vjp) that its backward marks
when it traces, and :func:`sparse24_jax.nnx.value_and_grad` (or
:func:`sparse24_jax.linen.value_and_grad`) adds every sum whose receipts stayed
unmarked itself. NNX layers hold their sum in a variable; linen layers take
theirs from :func:`handing` by their weight's identity. Trace-time bookkeeping
only: nothing here is in the compiled program.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import jax.numpy as jnp

__all__ = ["Receipt", "collecting", "handing", "receipt_for", "fits", "take", "was_added"]

_local = threading.local()


class Receipt:
    """Marked (``added``) when a backward rule adds the running sum it was given.
    Hashed by identity, so it can be a custom_vjp's static argument."""

    __slots__ = ("added",)

    def __init__(self):
        self.added = False

    def mark(self) -> None:
        self.added = True


@contextlib.contextmanager
def _innermost(name: str, value: Any) -> Iterator[Any]:
    """``value`` on top of this thread's stack ``name`` while open (they nest)."""
    stack = _local.__dict__.setdefault(name, [])
    stack.append(value)
    try:
        yield value
    finally:
        stack.pop()


def _top(name: str) -> Any:
    """The top of this thread's stack ``name``, or None when none is open."""
    stack = getattr(_local, name, None)
    return stack[-1] if stack else None


def collecting() -> contextlib.AbstractContextManager[dict[int, list[Receipt]]]:
    """Collect the receipts of the operations handed a running sum while this is
    open: ``{id(sum): [Receipt, ...]}``, filled as they trace."""
    return _innermost("receipts", {})


def receipt_for(acc: Any) -> Receipt | None:
    """A new receipt for an operation handed the running sum ``acc`` (None for
    none), filed under ``acc`` with the innermost :func:`collecting`, if any."""
    if acc is None:
        return None
    receipt = Receipt()
    receipts = _top("receipts")
    if receipts is not None:
        receipts.setdefault(id(acc), []).append(receipt)
    return receipt


def fits(acc: Any, weight: Any) -> bool:
    """Whether ``acc`` can be ``weight``'s running sum inside its backward: the
    weight's shape and dtype (a float32 sum of a bfloat16 weight is added after)."""
    return tuple(acc.shape) == tuple(weight.shape) and jnp.dtype(acc.dtype) == jnp.dtype(weight.dtype)


def was_added(receipts: dict[int, list[Receipt]], acc_id: int) -> bool:
    """Whether a backward rule added the sum whose id is ``acc_id``, by the
    receipts :func:`collecting` gathered (none: no operation got it, or JAX ran
    no backward for any that did)."""
    return any(r.added for r in receipts.get(acc_id, ()))


def handing(sums: dict[int, Any]) -> contextlib.AbstractContextManager[dict[int, Any]]:
    """Hand running sums to the layers that trace while this is open, by the
    identity of the weight each belongs to: ``{id(weight): sum}``. For module
    systems whose layers hold no state of their own to put a sum in (Flax
    linen: :func:`sparse24_jax.linen.value_and_grad`); a layer asks with
    :func:`take`."""
    return _innermost("handed", dict(sums))


def take(weight: Any) -> Any:
    """The running sum handed for ``weight`` by the innermost :func:`handing`,
    or ``None``. Taken once: a layer called twice adds its sum in one backward
    (the weight's cotangent sums both calls')."""
    handed = _top("handed")
    return None if handed is None else handed.pop(id(weight), None)

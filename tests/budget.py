"""Budgets for code that meets untrusted bytes (docs/THREATS.md: every input
has a budget, checked before work).

Every fuzz test runs each generated input through `within_budget`: the code
may fail only with our own errors (`extproc.errors.AuditError` or a type the
test names), and must stay under a memory peak (tracemalloc: what Python
allocated while it ran) and a CPU budget (this thread's CPU time). The CPU
bound guards against pathological cost (quadratic work, a hang) and sits
orders of magnitude above the normal cost: it is a budget, not a speed goal.

    @given(st.binary(max_size=4096))
    def test_xfcc_parser_fuzz(raw: bytes) -> None:
        with within_budget(memory=1 << 20, cpu=0.5):
            parse(raw)

Fuzz settings: `FUZZ` (deadline off: the budget is the bound; a fixed number
of examples per test keeps the suite's time predictable).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypedDict

from hypothesis import HealthCheck, settings

from extproc.errors import AuditError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KIB = 1 << 10
MIB = 1 << 20


class BudgetExceeded(AssertionError):
    pass


class Budget(TypedDict):
    """A budget a test names once and spends per input: `within_budget(**BUDGET)`."""

    memory: int
    cpu: float


@contextmanager
def within_budget(
    *,
    memory: int,
    cpu: float,
    allowed: tuple[type[BaseException], ...] = (AuditError,),
) -> Iterator[None]:
    """Run the body; fail if it raises anything but `allowed`, allocates more
    than `memory` bytes at its peak, or uses more than `cpu` seconds of CPU."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    started = time.thread_time()
    try:
        yield
    except allowed:
        pass
    finally:
        used = time.thread_time() - started
        _, peak = tracemalloc.get_traced_memory()
        if not was_tracing:
            tracemalloc.stop()
    if peak - base > memory:
        raise BudgetExceeded(f"memory peak {peak - base} bytes over the budget of {memory}")
    if used > cpu:
        raise BudgetExceeded(f"{used:.3f} s of CPU over the budget of {cpu} s")

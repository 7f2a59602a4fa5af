"""The fuzz budget helper fails where it must (tests/budget.py)."""

from __future__ import annotations

import pytest

from extproc.errors import ConfigError
from tests.budget import MIB, BudgetExceeded, within_budget


def test_our_errors_are_allowed() -> None:
    with within_budget(memory=MIB, cpu=1.0):
        raise ConfigError("bad input")


def test_a_foreign_exception_escapes() -> None:
    with pytest.raises(KeyError), within_budget(memory=MIB, cpu=1.0):
        raise KeyError("x")


def test_memory_over_budget_fails() -> None:
    with pytest.raises(BudgetExceeded, match="memory peak"), within_budget(memory=MIB, cpu=5.0):
        blob = bytearray(8 * MIB)
        del blob


def test_cpu_over_budget_fails() -> None:
    with pytest.raises(BudgetExceeded, match="CPU"), within_budget(memory=MIB, cpu=0.01):
        sum(i * i for i in range(3_000_000))

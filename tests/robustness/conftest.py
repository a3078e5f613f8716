"""Fixtures and reporting of the robustness suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """The suite solves thousands of tiny problems (a few unknowns each): intra-op threads only
    add their start-up cost there (a 4×4 Cholesky took 10 ms with 2 threads on a busy 2-core
    machine, 3× the whole Newton solve with one). Restored after the package."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fuzz examples ran, per test (the figure the issue's note asks for)."""
    from tests.robustness import test_fuzz

    if not test_fuzz.COUNTS:
        return
    write = terminalreporter.write_line
    write(f"robustness fuzz: {sum(test_fuzz.COUNTS.values())} examples ran")
    for test, count in test_fuzz.COUNTS.items():
        details = test_fuzz.DETAILS.get(test, {})
        extra = f" ({', '.join(f'{k}: {v}' for k, v in sorted(details.items()))})" \
            if details else ""
        write(f"  {test}: {count}{extra}")

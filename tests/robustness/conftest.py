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
    tests = {k: v for k, v in test_fuzz.COUNTS.items() if k.startswith("test_")}
    families = {k.removeprefix("family:"): v for k, v in test_fuzz.COUNTS.items()
                if k.startswith("family:")}
    terminalreporter.write_line(
        f"robustness fuzz: {sum(tests.values())} examples ran ("
        + ", ".join(f"{k}: {v}" for k, v in tests.items()) + ")")
    if test_fuzz.OUTCOMES:
        terminalreporter.write_line(
            "  extreme-value examples ended: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(test_fuzz.OUTCOMES.items())))
    if families:
        terminalreporter.write_line(
            "  smooth-point examples per solver family: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(families.items())))

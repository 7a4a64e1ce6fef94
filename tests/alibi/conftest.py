"""The alibi-detect cross-checks run in `.venv-alibi` (`make test-alibi`, ADR 0006).

The main suite never collects this folder (``collect_ignore`` in tests/conftest.py), and
``make test-alibi`` passes ``--confcutdir=tests/alibi`` so that tests/conftest.py, which needs the
service's dependencies, is not loaded here. alibi-detect missing in this venv is an error, not a
skip: a skipped cross-check would look like a passing one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Small kernel products lose to thread contention on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Fixtures for the core tests (no Qt). The bad-image corpus lives in tests/conftest.py (the GUI tests use it too)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's model work on one torch thread (PROTOLABEL_THREADS too, for the CLI's configure_threads).

    Small batches gain little from a second thread, and on a busy 2-core machine intra-op threads that wait
    for each other make embedding ~4x and tiny ops (index_add_, softmax) ~100x slower. Restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTOLABEL_THREADS", "1")
        yield
    torch.set_num_threads(threads)

"""The e2e tests' lab: one per test, with its own prefix, etcd port and state dir, always torn down."""

from __future__ import annotations

import pytest

from tests.e2e.labutil import LabRun


@pytest.fixture
def lab(root):
    run = LabRun()
    try:
        yield run
    finally:
        run.close()

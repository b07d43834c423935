"""Shared test setup: every test starts from a clean Pyro parameter store."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (long statistical checks) run only when asked for: ``pytest -m slow``."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Shared test setup: every test starts from a clean Pyro parameter store."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()

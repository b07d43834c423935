"""Data-parallel svi / mle under torch.distributed: two processes on the loopback interface
(gloo, float64), started as torchrun starts them, give the single process's objective trace and
parameters at the same global batch and seed (:mod:`ppgen.inference._distributed`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ._data_parallel_programs import fit, saved
from ._two_ranks import run_two_ranks

CASES = ("svi_amortized", "svi_full_batch_autonormal", "mle_minibatch")
WORKER = Path(__file__).with_name("_data_parallel_programs.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Every case fitted by 2 processes (one launch, the environment torchrun sets)."""
    return run_two_ranks(WORKER, tmp_path_factory.mktemp("ranks"), *CASES)


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_give_the_single_process_trace_and_parameters(case, two_ranks):
    single = saved(fit(case))
    for rank in range(2):
        with np.load(two_ranks / f"{case}-rank{rank}.npz") as parallel:
            assert set(parallel.files) == set(single)
            for key, value in single.items():
                np.testing.assert_allclose(parallel[key], value, rtol=1e-6, atol=1e-6, err_msg=f"{case} rank {rank}: {key}")


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    from ppgen.inference._distributed import World

    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        World(rank=0, size=3).shard(10, "SVI")
    assert World(rank=2, size=3).shard(12, "SVI") == (8, 12)


def test_a_single_process_is_not_sharded():
    from ppgen.inference._distributed import world

    assert not torch.distributed.is_initialized()
    assert world() is None

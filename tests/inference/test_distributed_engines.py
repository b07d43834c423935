"""Adversarial (and diffusion) training under torch.distributed: two processes on the loopback
interface (gloo, float64), started as torchrun starts them, give the single process's loss traces
and parameters at the same global batch and seed (:mod:`ppgen.inference._distributed`); with
the ranks' gradient average switched off they do not, so the comparison can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ._distributed_programs import fit, saved
from ._two_ranks import run_two_ranks

CASES = (
    "adversarial_non_saturating", "adversarial_wgan_gp_implicit", "adversarial_wgan_gp", "adversarial_minimax_nested_plates",
    "adversarial_correlated_noise", "adversarial_rank_seeded_networks",
    "diffusion_minibatch", "diffusion_declared_minibatch", "diffusion_full_batch_simple",
)
UNAVERAGED = "adversarial_wgan_gp+unaveraged"
REFUSED = "diffusion_importance"
STOCHASTIC = "diffusion_stochastic_layer"
WORKER = Path(__file__).with_name("_distributed_programs.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Every case fitted by 2 processes (one launch, the environment torchrun sets)."""
    return run_two_ranks(WORKER, tmp_path_factory.mktemp("ranks"), *CASES, UNAVERAGED, REFUSED, STOCHASTIC)


@pytest.fixture(scope="module")
def single_process() -> dict[str, dict[str, np.ndarray]]:
    return {case: saved(fit(case)) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_give_the_single_process_traces_and_parameters(case, two_ranks, single_process):
    single = single_process[case]
    for rank in range(2):
        with np.load(two_ranks / f"{case}-rank{rank}.npz") as parallel:
            assert set(parallel.files) == set(single)
            for key, value in single.items():
                np.testing.assert_allclose(parallel[key], value, rtol=1e-6, atol=1e-6, err_msg=f"{case} rank {rank}: {key}")


def test_without_the_gradient_average_the_ranks_leave_the_single_process_path(two_ranks, single_process):
    case = UNAVERAGED.partition("+")[0]
    single = single_process[case]
    for rank in range(2):
        with np.load(two_ranks / f"{UNAVERAGED}-rank{rank}.npz") as parallel:
            # each rank's first loss is its own shard's (half the data), not the global batch's, and
            # the parameters drift apart by far more than the comparison's tolerance of 1e-6
            assert abs(parallel["trace:critic_loss"][0] - single["trace:critic_loss"][0]) > 1e-3
            assert max(np.abs(parallel[key] - single[key]).max() for key in ("param:shift", "param:spread")) > 1e-4


def test_importance_step_sampling_is_refused_under_torch_distributed(two_ranks):
    # each rank's p_t would follow its own shard's terms, so the ranks would draw different steps
    for rank in range(2):
        with np.load(two_ranks / f"{REFUSED}-rank{rank}.npz") as refused:
            assert str(refused["error"]) == (
                "SVI: step_sampling='importance' is not trained data-parallel; use step_sampling='uniform' under torch.distributed"
            )


def test_random_numbers_drawn_inside_the_network_leave_the_ranks_in_step(two_ranks):
    """A network that draws on each call draws as many numbers as its rank has distinct steps
    (valid draws, not the single process's); the ranks' random streams are re-synchronised after
    such a step, so every rank keeps drawing the same global steps and noise, and all ranks
    return the same Result: the final ELBO estimate, made on each rank from its own random
    stream after training, agrees."""
    with np.load(two_ranks / f"{STOCHASTIC}-rank0.npz") as first, np.load(two_ranks / f"{STOCHASTIC}-rank1.npz") as second:
        assert set(first.files) == set(second.files)
        for key in first.files:
            np.testing.assert_allclose(first[key], second[key], rtol=1e-9, err_msg=key)

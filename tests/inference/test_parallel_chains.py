"""``chain_method="parallel"``: one NUTS/HMC chain per XLA device. ppgen asks XLA for the host
devices before JAX starts (so the check runs in a fresh process), the chains sample the exact
conjugate posterior (z-tests at 4 Monte Carlo standard errors from ArviZ's ESS), and a process
in which JAX started with one device gets a warning and sequential chains.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import ppgen
    from ppgen import dist, plate, sample
    from ppgen.inference.hmc import HMC, NUTS

    def scale_bias(num_weighings, weighings=None):
        bias = sample("bias", dist.Normal(-1.0, 1.5))
        with plate("weighing", num_weighings):
            sample("weighings", dist.Normal(bias, 0.4), obs=weighings)

    weighings = np.random.default_rng(17).normal(0.35, 0.4, size=9)
    engine = {"nuts": NUTS, "hmc": HMC}[sys.argv[1]](
        num_chains=2, num_warmup=400, num_samples=1500, chain_method="parallel", progress=False, seed=11)
    import jax
    result = ppgen.infer(scale_bias, 9, weighings, engine=engine)
    draws = np.asarray(result.samples["bias"]).reshape(2, -1)
    print(json.dumps({"devices": result.diagnostics["chain_devices"], "num_chains": result.num_chains,
                      "draws": draws.tolist(), "weighings": weighings.tolist()}))
    """
)


@pytest.mark.parametrize("engine", ["nuts", pytest.param("hmc", marks=pytest.mark.slow)])  # same machinery: hmc when asked
def test_parallel_chains_run_one_per_device_and_sample_the_conjugate_posterior(tmp_path, engine):
    import arviz as az

    script = tmp_path / "parallel_chains.py"
    script.write_text(FRESH_PROCESS)
    done = subprocess.run([sys.executable, str(script), engine], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["num_chains"] == 2  # the two chains ran at once, on two devices
    draws = np.asarray(out["draws"])
    assert not np.array_equal(draws[0], draws[1])  # two chains with their own keys
    # Normal prior N(-1, 1.5²), Normal likelihood with known sd 0.4: closed-form posterior
    weighings = np.asarray(out["weighings"])
    precision = 1 / 1.5**2 + len(weighings) / 0.4**2
    mean, sd = (-1.0 / 1.5**2 + weighings.sum() / 0.4**2) / precision, precision**-0.5
    ess = float(az.ess(draws))
    assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(ess)
    assert abs(draws.std() - sd) < 4 * sd / np.sqrt(2 * ess)


def test_parallel_chains_after_jax_started_with_one_device_warn_and_run_sequentially():
    import jax

    from ppgen import dist, infer, plate, sample
    from ppgen.inference.hmc import NUTS

    jax.numpy.zeros(1).block_until_ready()  # JAX has started: too late to ask for devices
    if jax.local_device_count() > 1:
        pytest.skip("this process already has several XLA devices")

    def tide(levels=None):
        height = sample("height", dist.Normal(0.0, 1.0))
        with plate("reading", 4):
            sample("levels", dist.Normal(height, 1.0), obs=levels)

    engine = NUTS(num_chains=2, num_warmup=30, num_samples=30, chain_method="parallel", progress=False)
    with pytest.warns(UserWarning, match="chain_method='parallel' found one XLA device .* so the 2 chains run one after another"):
        result = infer(tide, np.array([0.2, -0.1, 0.4, 0.0]), engine=engine)
    assert result.num_chains == 2 and result.samples["height"].shape == (60,) and result.diagnostics["chain_devices"] == 1

"""The measured task table fills in for any catalogue family from its examples: a fake
'autoregressive' family (a user's letter model, not in the catalogue) gets its row measured next
to the tutorial's ratings; a family whose data cannot be simulated again says 'not measured'."""

from __future__ import annotations

import numpy as np
import pytest

from ppgen import dist, markov, ops, param, plate, sample
from ppgen.catalogue import Example, Simulated
from ppgen.task_table import TUTORIAL_RATINGS, measure, to_html
from ppgen.tour import judge, run_example


def letter_chain(text=None, length=6, alphabet=4):
    """Next-letter model: learned first-letter and letter-to-letter probabilities."""
    length = length if text is None else len(text)
    first = param("first", ops.ones(alphabet) / alphabet, constraint=dist.constraints.simplex)
    follow = param("follow", ops.ones((alphabet, alphabet)) / alphabet, constraint=dist.constraints.simplex)
    previous = None
    for t in markov(range(length)):
        probs = first if t == 0 else follow[previous]
        previous = sample(f"letter_{t}", dist.Categorical(probs), obs=None if text is None else text[t])


letter_chain.__module__ = "my_lab.autoregressive"  # a family named like the tutorial's


def simulate_letters(length=6, seed=0):
    rng = np.random.default_rng(seed)
    follow = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    text = [rng.integers(4)]
    for _ in range(length - 1):
        text.append(rng.choice(4, p=follow[text[-1]]))
    return Simulated({"text": np.array(text), "alphabet": 4}, {"follow": follow})


def sensor_offset(readings=None, num_readings=40):
    """Calibration offset of a sensor, one reading per plate element."""
    offset = sample("offset", dist.Normal(0.0, 5.0))
    with plate("readings", num_readings if readings is None else len(readings)):
        sample("reading", dist.Normal(offset, 1.0), obs=readings)


sensor_offset.__module__ = "my_lab.calibration"


def simulate_readings_without_seed():
    return Simulated({"readings": np.random.default_rng(4).normal(2.0, 1.0, 40)}, {"offset": 2.0})


@pytest.fixture(scope="module")
def letter_report():
    example = Example("letters", letter_chain, simulate_letters, "next-letter model", options={"mle": {"num_steps": 3}})
    return judge(run_example(example, quick=True, engines=["mle", "enumerate"]))


def test_a_family_fills_in_from_its_examples(letter_report):
    rows = measure([letter_report], quick=True)
    assert [row.family for row in rows] == ["autoregressive"]
    row = rows[0]
    assert row.tutorial == TUTORIAL_RATINGS["autoregressive"]
    assert row.cells["sampling"].rating == "×" and "sequential over 6 steps" in row.cells["sampling"].measured
    assert row.cells["inference"].rating == "××" and "no latent" in row.cells["inference"].measured
    assert row.cells["scoring"].rating in ("✓✓", "✓")
    assert row.cells["scoring"].measured.startswith("exact, ") and "ms/datum" in row.cells["scoring"].measured
    assert row.cells["learning"].rating in ("✓✓", "✓", "~") and "mle" in row.cells["learning"].measured
    # the tutorial says "× no latents", the measurement ××: explained, with the measurement
    assert "inference" in row.disagreements()
    page = to_html(rows)
    assert "tutorial: ✓✓ exact chain rule" in page and "Thresholds:" in page


def test_a_family_that_cannot_be_measured_says_why():
    example = Example("offset", sensor_offset, simulate_readings_without_seed, "sensor offset", options={"importance": {"num_samples": 4000}})
    report = judge(run_example(example, quick=True, engines=["enumerate", "importance", "map"]))
    row = measure([report], quick=True)[0]
    assert row.family == "calibration" and row.tutorial == {}
    assert row.cells["scoring"].rating is None
    assert "cannot simulate held-out data" in row.cells["scoring"].measured
    assert row.cells["scoring"].text.startswith("not measured: ")

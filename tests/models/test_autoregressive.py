"""The autoregressive family against independent truth: normalisation over all 2^D binary
vectors, the chain rule computed by hand from the network's parameters, the held-out
ordering on digits, and learning a known source's exact entropy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen.models.autoregressive import char_model, decode, encode, fvsbn, load_text, make_network, nade, per_symbol


def _all_binary(D: int) -> np.ndarray:
    return np.array(list(itertools.product([0.0, 1.0], repeat=D)))


def _per_datum_log_p(model, x: np.ndarray, network) -> np.ndarray:
    """log p(x_n) of each row, from Pyro's own site log densities of one run of the program."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(torch.as_tensor(x), network=network)
    return sum(site["fn"].log_prob(site["value"]).detach().numpy() for name, site in trace.nodes.items() if name.startswith("x_"))


def _hand_fvsbn(x: np.ndarray, net) -> np.ndarray:
    W, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    logits = b + x @ np.tril(W, -1).T  # logit_i = b_i + Σ_{j<i} W_ij x_j
    return (x * logits - np.logaddexp(0, logits)).sum(1)


def _hand_nade(x: np.ndarray, net) -> np.ndarray:
    W, c, V, b = (p.detach().numpy() for p in (net.W, net.c, net.V, net.b))
    out = np.zeros(len(x))
    for i in range(x.shape[1]):  # the O(D²H) definition, not the incremental update
        h = 1 / (1 + np.exp(-(c + x[:, :i] @ W[:i])))
        logit = b[i] + h @ V[i]
        out += x[:, i] * logit - np.logaddexp(0, logit)
    return out


@pytest.mark.parametrize("kind, model, hand, sizes", [("fvsbn", fvsbn, _hand_fvsbn, {}), ("nade", nade, _hand_nade, {"hidden": 7})])
def test_exact_score_normalises_and_follows_the_chain_rule(kind, model, hand, sizes):
    D = 10
    network = make_network(kind, D, seed=3, **sizes)
    with torch.no_grad():  # non-trivial parameters: the fresh biases are zero
        for parameter in network.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5), dtype=parameter.dtype))
    x = _all_binary(D)
    per_datum = _per_datum_log_p(model, x, network)
    assert abs(np.logaddexp.reduce(per_datum)) < 1e-9  # Σ_x p(x) = 1 over all 1024 vectors
    by_hand = hand(x, network)
    np.testing.assert_allclose(per_datum, by_hand, rtol=0, atol=1e-9)
    subset = x[::37]
    exact = ppgen.score(model, subset, network=network, engine="enumerate")
    assert exact.kind == "exact"
    assert abs(exact.value - by_hand[::37].sum()) < 1e-8


def test_generate_draws_sites_in_their_support_and_per_symbol_units():
    network = make_network("nade", 12, hidden=5, seed=1)
    draws = ppgen.generate(nade, num_data=4, D=12, network=network, num_samples=3, seed=2)
    assert sorted(draws, key=lambda k: int(k[2:])) == [f"x_{i}" for i in range(12)]
    assert all(set(np.unique(v)) <= {0.0, 1.0} and v.shape == (3, 4) for v in draws.values())
    units = per_symbol(-2 * 12 * math.log(2), 2, 12)  # 1 bit per site
    assert units["bits_per_dim"] == pytest.approx(1.0) and units["perplexity"] == pytest.approx(2.0)


def test_text_corpus_split_and_codes_round_trip():
    train, test = load_text(length=50, test_fraction=0.2)
    assert train.shape[1] == test.shape[1] == 50 and len(train) > 3 * len(test) > 0
    assert decode(encode("for x in range(3):\n")) == "for x in range(3):\n"


def test_char_model_prompt_is_observed_and_continuation_latent():
    network = make_network("char", hidden=8, embedding=4, seed=0)
    structure = ppgen.inspect(char_model, prompt=encode("ab")[None], length=5, network=network)
    assert set(structure.observed) == {"x_0", "x_1"} and set(structure.latent) == {"x_2", "x_3", "x_4"}
    with pytest.raises(ValueError, match="not both"):
        char_model(x=encode("abcde")[None], prompt=encode("ab")[None], network=network)


def _plain_beam(network, prompt: np.ndarray, new: int, num_beams: int) -> tuple[np.ndarray, np.ndarray]:
    """A textbook beam loop over the GRU that reorders its hidden state between steps: the B
    continuations (B, new), best first, and their log p(prompt, continuation)."""
    with torch.no_grad():
        state, score = network.initial((1,)), torch.zeros(1, dtype=torch.float64)
        for t, code in enumerate(prompt):
            score = score + network.logits(state, t).log_softmax(-1)[:, code]
            state = network.update(state, t, torch.tensor([code]))
        history = torch.zeros(1, 0, dtype=torch.long)
        for t in range(len(prompt), len(prompt) + new):
            candidates = (score[:, None] + network.logits(state, t).log_softmax(-1)).reshape(-1)
            score, best = torch.topk(candidates, min(num_beams, len(candidates)))
            parents, values = best // network.vocabulary, best % network.vocabulary
            history = torch.cat([history[parents], values[:, None]], 1)
            if t + 1 < len(prompt) + new:
                state = network.update(state[parents], t, values)
    return history.numpy(), score.numpy()


def test_char_model_beam_search_is_a_plain_beam_loop_over_its_gru():
    network = make_network("char", embedding=5, hidden=12, seed=2)
    prompt = encode("if x")
    result = ppgen.infer(char_model, prompt=prompt[None], length=len(prompt) + 15, network=network, engine="beam", num_beams=4)
    assert result.diagnostics["path"] == "carried"  # one run of the program, its GRU state carried
    continuations, log_p = _plain_beam(network, prompt, 15, 4)
    ours = np.stack([result.samples[f"x_{t}"] for t in range(len(prompt), len(prompt) + 15)], 1)
    np.testing.assert_array_equal(ours, continuations)
    np.testing.assert_allclose(result.sample_stats["log_joint"], log_p, rtol=0, atol=1e-9)


def test_generate_keeps_the_prompt_and_continues_from_its_state():
    """The prompt comes back unchanged in every draw; the next two characters follow
    p(x_P, x_P+1 | prompt) computed by a plain loop over the GRU (χ², seeded)."""
    from scipy.stats import chisquare

    network = make_network("char", vocabulary=4, embedding=3, hidden=6, seed=4)
    with torch.no_grad():
        network.out.weight.mul_(4.0)  # sharp conditionals, far from the prompt-free marginals
    prompt = np.array([[3, 1, 1, 0, 2]])
    num_samples = 4000
    draws = ppgen.generate(char_model, prompt=prompt, length=7, network=network, num_samples=num_samples, seed=6)
    for t in range(5):
        np.testing.assert_array_equal(draws[f"x_{t}"].reshape(-1), np.full(num_samples, prompt[0, t]))
    with torch.no_grad():
        state = network.initial((1,))
        for t, code in enumerate(prompt[0]):
            state = network.update(state, t, torch.tensor([code]))
        first = network.logits(state, 5).softmax(-1)[0]  # p(x_5 | prompt)
        after = network.logits(network.update(state.expand(4, -1), 5, torch.arange(4)), 6).softmax(-1)  # p(x_6 | prompt, x_5)
    pairs = (first[:, None] * after).reshape(-1).numpy()
    counts = np.bincount((4 * draws["x_5"] + draws["x_6"]).reshape(-1).astype(int), minlength=16)
    assert chisquare(counts, num_samples * pairs).pvalue > 1e-3, counts


def _hmm_source():
    initial = np.array([0.6, 0.4])
    transition = np.array([[0.9, 0.1], [0.2, 0.8]])
    emission = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    return initial, transition, emission


def _hmm_log_p(y: np.ndarray, initial, transition, emission) -> np.ndarray:
    """log p(y) of each row by the forward algorithm."""
    alpha = initial * emission[:, y[:, 0]].T
    log_p = np.log(alpha.sum(1))
    alpha /= alpha.sum(1, keepdims=True)
    for t in range(1, y.shape[1]):
        alpha = (alpha @ transition) * emission[:, y[:, t]].T
        log_p += np.log(alpha.sum(1))
        alpha /= alpha.sum(1, keepdims=True)
    return log_p


def _simulate_hmm(n: int, T: int, seed: int) -> np.ndarray:
    initial, transition, emission = _hmm_source()
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=initial)
    y = np.zeros((n, T), dtype=np.int64)
    for t in range(T):
        if t:
            z = (rng.random(n) < transition[z, 1]).astype(int)
        y[:, t] = (rng.random(n)[:, None] > np.cumsum(emission[z], 1)).sum(1)
    return y


@pytest.mark.slow
def test_char_model_learns_a_known_hmm_source_to_its_entropy():
    """Cross-entropy per symbol of a GRU trained on HMM sequences vs the source's exact entropy
    per symbol H(Y_1..T)/T (forward algorithm over all 3^T sequences): within 0.05 nats, and
    never below it by more than 3 standard errors (the model cannot beat the source)."""
    T = 8
    source = _hmm_source()
    every = np.array(list(itertools.product(range(3), repeat=T)))
    log_p = _hmm_log_p(every, *source)
    assert abs(np.logaddexp.reduce(log_p)) < 1e-9
    entropy_per_symbol = -(np.exp(log_p) * log_p).sum() / T
    train, test = _simulate_hmm(6000, T, seed=0), _simulate_hmm(4000, T, seed=1)
    network = make_network("char", vocabulary=3, embedding=4, hidden=16, seed=0)
    ppgen.learn(char_model, train, network=network, engine="mle", subsample_size=200, num_steps=1500, learning_rate=0.02)
    nll = -_per_datum_log_p(char_model, test, network) / T
    estimate, stderr = nll.mean(), nll.std(ddof=1) / math.sqrt(len(nll))
    assert abs(estimate - entropy_per_symbol) < 0.05
    assert estimate > entropy_per_symbol - 3 * stderr


@pytest.mark.slow
def test_digits_held_out_nll_orders_nade_fvsbn_independent_pixels():
    from ppgen.models.vae import load_digits_binary

    x_train, _, x_test, _ = load_digits_binary()
    nll = {}
    for kind, model in (("nade", nade), ("fvsbn", fvsbn)):
        network = make_network(kind, 64, seed=0)
        ppgen.learn(model, x_train, network=network, engine="mle", subsample_size=100, num_steps=300, learning_rate=0.01)
        nll[kind] = -ppgen.score(model, x_test, network=network, engine="enumerate").value / len(x_test)
    p = x_train.mean(0).clip(0.5 / len(x_train), 1 - 0.5 / len(x_train))  # independent Bernoulli pixels, MLE
    nll["independent"] = -(x_test * np.log(p) + (1 - x_test) * np.log1p(-p)).sum(1).mean()
    assert nll["nade"] < nll["fvsbn"] < nll["independent"], nll


@pytest.mark.parametrize(
    "model, network, x",
    [
        (fvsbn, "fvsbn", np.zeros((5, 9))),
        (nade, "nade", np.zeros((5, 9))),
        (char_model, "char", np.zeros((3, 9), dtype=np.int64)),
    ],
)
def test_diagram_draws_the_chain_of_sites_as_one_node_fed_by_the_network(model, network, x):
    from ppgen.diagram import diagram_spec, to_graphviz

    sizes = {"hidden": 6} if network != "fvsbn" else {}
    spec = diagram_spec(ppgen.inspect(model, x, network=make_network(network, 9, seed=0, **sizes)))
    chain = [name for name in spec["nodes"] if name.startswith("x_")]
    assert chain == ["x_t"] and spec["nodes"]["x_t"]["chain_length"] == 9
    edges = [(e["source"], e["target"], e.get("label")) for e in spec["edges"]]
    assert ("x_t", "x_t", "t−1 → t") in edges
    assert (network, "x_t", None) in edges and spec["nodes"][network]["kind"] == "param"  # the network's arrow
    assert f"{network} -> x_t" in to_graphviz(spec).source

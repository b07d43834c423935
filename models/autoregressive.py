"""Autoregressive models: FVSBN, NADE and a character-level GRU, each a chain of sites.

Every model here follows the chain rule over its sites ``x_0 … x_{D-1}``,

    p(x) = Π_i p(x_i | x_<i),

and its network carries a *state* from one site to the next, so a full pass costs one update
per site (Frey 1998; Larochelle & Murray 2011; Cho et al. 2014):

- :func:`fvsbn`: x_i ~ Bernoulli(σ(b_i + Σ_{j<i} W_ij x_j)); the state is the running vector
  s = b + W x_<i (O(D) per site, O(D²) per datum, the model's own cost).
- :func:`nade`: x_i ~ Bernoulli(σ(b_i + V_i · σ(a_i))) with the shared hidden layer updated
  incrementally, a_0 = c, a_{i+1} = a_i + W_{:,i} x_i: O(H) per site, O(D·H) per datum.
- :func:`char_model`: x_t ~ Categorical(softmax(U h_t + d)) with h_{t+1} = GRU(e(x_t), h_t), over
  the English text of ``pydoc_data.topics`` (the ``help()`` topics every Python ships). A GRU
  rather than a causal Transformer: its state between steps is one vector per sequence, so
  generating a symbol costs one cell update, not attention over the whole prefix (no cache
  needed), which is what keeps sampling and beam search linear in the length.

Each network has the same three methods (``initial``, ``logits``, ``update``), and one program
body (:func:`_chain`) serves all three models. It passes the state through :func:`ppgen.carry`
after each site, which lets beam search run it once with its beams as a batch dimension and
reorder the state between them (``engine="beam"``, O(L) for L sites rather than O(L²)). The network is a model argument registered with
``ppgen.module`` and trained in place (``ppgen.learn(..., engine="mle")``);
:func:`make_network` builds a fresh seeded one. Scores are exact (no latents):
``ppgen.score(..., engine="enumerate")``; :func:`per_symbol` turns log p into nats per datum,
bits per dimension and perplexity.
"""

from __future__ import annotations

import math
import string
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch

from ppgen import carry, dist, module, plate, sample
from ppgen.catalogue import Example, Simulated
from ppgen.models._figures import image_grid
from ppgen.models.vae import load_digits_binary

NUM_PIXELS = 64

#: The character model's alphabet: newline and printable ASCII; other characters of the corpus
#: (a few dozen accented letters and symbols, < 0.1 % of it) are read as "?".
ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127))
_UNKNOWN = ALPHABET.index("?")


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.nn.Parameter:
    return torch.nn.Parameter((torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)


# --------------------------------------------------------------------------------------------
# networks: initial(batch_shape) -> state; logits(state, i); update(state, i, x_i) -> state


class _ChainNetwork(torch.nn.Module):
    """Calling the network computes the logits, ``network(state, i) = network.logits(state, i)``:
    the program calls it, so the structure tracer (which hooks a registered module's calls) sees
    the sites' logits come from the network and draws it as their parent."""

    def forward(self, state: torch.Tensor, i: int) -> torch.Tensor:
        return self.logits(state, i)


class FVSBNNetwork(_ChainNetwork):
    """Logistic conditionals b_i + Σ_{j<i} W_ij x_j (only W's strictly lower triangle is used)."""

    def __init__(self, D: int = NUM_PIXELS, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.D = D
        self.weight = _uniform((D, D), 1.0 / math.sqrt(D), generator)
        self.bias = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def initial(self, batch_shape: tuple[int, ...]) -> torch.Tensor:
        return self.bias.expand(*batch_shape, self.D)

    def logits(self, state: torch.Tensor, i: int) -> torch.Tensor:
        return state[..., i]

    def update(self, state: torch.Tensor, i: int, value: torch.Tensor) -> torch.Tensor:
        # column i of the strict lower triangle: x_i feeds the logits of x_{i+1} … x_{D-1}
        column = torch.cat([self.weight.new_zeros(i + 1), self.weight[i + 1:, i]])
        return state + value.to(state.dtype)[..., None] * column


class NADENetwork(_ChainNetwork):
    """NADE's shared hidden layer: logit_i = b_i + V_i · σ(a_i), a_{i+1} = a_i + W_{:,i} x_i."""

    def __init__(self, D: int = NUM_PIXELS, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.D, self.hidden = D, hidden
        self.W = _uniform((D, hidden), 1.0 / math.sqrt(D), generator)  # row i is W_{:,i}
        self.c = torch.nn.Parameter(torch.zeros(hidden, dtype=torch.float64))
        self.V = _uniform((D, hidden), 1.0 / math.sqrt(hidden), generator)
        self.b = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def initial(self, batch_shape: tuple[int, ...]) -> torch.Tensor:
        return self.c.expand(*batch_shape, self.hidden)

    def logits(self, state: torch.Tensor, i: int) -> torch.Tensor:
        return self.b[i] + torch.sigmoid(state) @ self.V[i]

    def update(self, state: torch.Tensor, i: int, value: torch.Tensor) -> torch.Tensor:
        return state + value.to(state.dtype)[..., None] * self.W[i]


class CharNetwork(_ChainNetwork):
    """A one-layer GRU over characters: logits = U h_t + d, h_{t+1} = GRU(e(x_t), h_t)."""

    def __init__(self, vocabulary: int = len(ALPHABET), embedding: int = 32, hidden: int = 128, seed: int = 0) -> None:
        super().__init__()
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # torch's own initialisers, from the seed only
        try:
            self.embed = torch.nn.Embedding(vocabulary, embedding, dtype=torch.float64)
            self.cell = torch.nn.GRUCell(embedding, hidden, dtype=torch.float64)
            self.out = torch.nn.Linear(hidden, vocabulary, dtype=torch.float64)
        finally:
            torch.random.set_rng_state(torch_state)
        self.vocabulary, self.hidden = vocabulary, hidden

    def initial(self, batch_shape: tuple[int, ...]) -> torch.Tensor:
        return self.out.weight.new_zeros(*batch_shape, self.hidden)

    def logits(self, state: torch.Tensor, i: int) -> torch.Tensor:
        return self.out(state)

    def update(self, state: torch.Tensor, i: int, value: torch.Tensor) -> torch.Tensor:
        shape = state.shape[:-1]
        if value.shape != shape:  # (torch.broadcast_shapes costs as much as the embedding)
            shape = torch.broadcast_shapes(value.shape, shape)
            value, state = value.expand(shape), state.expand(*shape, self.hidden)
        inputs = self.embed(value.long().reshape(-1))
        return self.cell(inputs, state.reshape(-1, self.hidden)).reshape(*shape, self.hidden)


def make_network(name: str, D: int = NUM_PIXELS, seed: int = 0, **sizes: int) -> torch.nn.Module:
    """A fresh seeded network: ``"fvsbn"`` (D), ``"nade"`` (D, ``hidden``) or ``"char"``
    (``embedding``, ``hidden``; D is the sequence length and does not size the GRU)."""
    if name == "fvsbn":
        return FVSBNNetwork(D, seed=seed, **sizes)
    if name == "nade":
        return NADENetwork(D, seed=seed, **sizes)
    if name == "char":
        return CharNetwork(seed=seed, **sizes)
    raise ValueError(f"make_network: name must be 'fvsbn', 'nade' or 'char', got {name!r}")


# --------------------------------------------------------------------------------------------
# the programs


def _chain(x: Optional[Any], n: int, D: int, network: torch.nn.Module, categorical: bool, prompt: Optional[Any] = None) -> None:
    """Sites x_0 … x_{D-1} in plate N, each given the network's state after the earlier ones.
    With a ``prompt`` (N, P), x_0 … x_{P-1} are observed and the rest are latent sites."""
    with plate("N", n):
        state = network.initial((n,))
        for i in range(D):
            logits = network(state, i)
            fn = dist.Categorical(logits=logits) if categorical else dist.Bernoulli(logits=logits)
            if prompt is None:
                value = sample(f"x_{i}", fn, obs=None if x is None else x[..., i])
            elif i < prompt.shape[-1]:
                value = sample(f"x_{i}", fn, obs=prompt[..., i])
            else:
                value = sample(f"x_{i}", fn)
            if i + 1 < D:  # carry: beam search reorders the state to the beams that extend it
                state = network.update(carry("state", state, event_dim=1), i, value)


def _network(model: str, network: Optional[torch.nn.Module], x: Optional[Any], kind: str, D: int) -> torch.nn.Module:
    if network is not None:
        return network
    if x is not None:
        raise ValueError(f"{model}: pass network=make_network({kind!r}, ...) (the network to train) together with x")
    return make_network(kind, D)


def fvsbn(x: Optional[Any] = None, num_data: int = 100, D: int = NUM_PIXELS, network: Optional[torch.nn.Module] = None) -> None:
    """Fully visible sigmoid belief net: x_i ~ Bernoulli(σ(b_i + Σ_{j<i} W_ij x_j)).

    Parameters
    ----------
    x : array of shape (N, D) with values in {0, 1}, or None to generate ``num_data`` vectors.
    D : number of binary sites (``x_0 … x_{D-1}``).
    network : an :class:`FVSBNNetwork` (``make_network("fvsbn", D)``), trained in place.

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.autoregressive import fvsbn, make_network
    >>> draws = ppgen.generate(fvsbn, num_data=2, D=5, network=make_network("fvsbn", 5))
    >>> draws["x_4"].shape
    (1, 2)
    """
    network = _network("fvsbn", network, x, "fvsbn", D)
    module("fvsbn", network)
    _chain(x, num_data if x is None else x.shape[0], D if x is None else x.shape[-1], network, categorical=False)


def nade(x: Optional[Any] = None, num_data: int = 100, D: int = NUM_PIXELS, network: Optional[torch.nn.Module] = None) -> None:
    """Neural autoregressive density estimator (Larochelle & Murray 2011):
    x_i ~ Bernoulli(σ(b_i + V_i · σ(a_i))), a_0 = c, a_{i+1} = a_i + W_{:,i} x_i.

    Parameters
    ----------
    x : array of shape (N, D) with values in {0, 1}, or None to generate ``num_data`` vectors.
    D : number of binary sites.
    network : a :class:`NADENetwork` (``make_network("nade", D, hidden=H)``), trained in place.
    """
    network = _network("nade", network, x, "nade", D)
    module("nade", network)
    _chain(x, num_data if x is None else x.shape[0], D if x is None else x.shape[-1], network, categorical=False)


def char_model(
    x: Optional[Any] = None, num_data: int = 1, length: int = 64, network: Optional[torch.nn.Module] = None, prompt: Optional[Any] = None
) -> None:
    """Character-level GRU: x_t ~ Categorical(softmax(U h_t + d)), h_{t+1} = GRU(e(x_t), h_t).

    Parameters
    ----------
    x : integer array of shape (N, length), codes into :data:`ALPHABET` (see :func:`encode`),
        or None to generate ``num_data`` strings of ``length`` characters.
    network : a :class:`CharNetwork` (``make_network("char")``), trained in place.
    prompt : integer array (num_data, P), P < length, or None: the first P characters as observed
        data and the other ``length - P`` as latent sites, which ``engine="beam"`` decodes
        (``ppgen.infer(char_model, prompt=p, length=L, network=net, engine="beam")``).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.autoregressive import char_model, decode, encode, make_network
    >>> net = make_network("char", hidden=16)
    >>> best = ppgen.infer(char_model, prompt=encode("def")[None], length=6, network=net, engine="beam", num_beams=2)
    >>> len(decode([best.map_estimate[f"x_{t}"] for t in range(3, 6)]))
    3
    """
    if x is not None and prompt is not None:
        raise ValueError("char_model: pass x (data to score or learn from) or prompt (to decode from), not both")
    network = _network("char_model", network, x, "char", length)
    module("char", network)
    n = num_data if x is None and prompt is None else (x if x is not None else prompt).shape[0]
    _chain(x, n, length if x is None else x.shape[-1], network, categorical=True, prompt=prompt)


# --------------------------------------------------------------------------------------------
# data


def encode(text: str) -> np.ndarray:
    """Codes of ``text`` in :data:`ALPHABET` (characters outside it read as "?")."""
    lookup = {char: index for index, char in enumerate(ALPHABET)}
    return np.array([lookup.get(char, _UNKNOWN) for char in text], dtype=np.int64)


def decode(codes: Any) -> str:
    """The text of a sequence of codes."""
    return "".join(ALPHABET[int(code)] for code in np.asarray(codes).reshape(-1))


@lru_cache(maxsize=1)
def corpus() -> str:
    """The English text of the ``help()`` topics (``pydoc_data.topics``), in a fixed order."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def load_text(length: int = 64, test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The corpus split by position (the first 1 − ``test_fraction`` of it trains) and cut into
    non-overlapping windows of ``length`` characters: (x_train, x_test), int64 (N, length)."""
    codes = encode(corpus())
    cut = int(len(codes) * (1 - test_fraction))

    def windows(part: np.ndarray) -> np.ndarray:
        count = len(part) // length
        return part[: count * length].reshape(count, length)

    return windows(codes[:cut]), windows(codes[cut:])


def per_symbol(log_p: float, num_data: int, num_dims: int) -> dict[str, float]:
    """Likelihood in the units of the literature, from log p of ``num_data`` data of
    ``num_dims`` sites each: nats per datum −log p / N, bits per dimension
    −log p / (N D ln 2), and perplexity exp(−log p / (N D)) (per character for text)."""
    nats = -float(log_p) / num_data
    return {"nats_per_datum": nats, "bits_per_dim": nats / (num_dims * math.log(2)), "perplexity": math.exp(nats / num_dims)}


def simulate_digits(kind: str = "nade", seed: int = 0) -> Simulated:
    """The binarised digits' training set and a fresh network of ``kind`` (the tour's data)."""
    x_train, y_train, x_test, y_test = load_digits_binary(seed=seed)
    return Simulated({"x": x_train, "D": NUM_PIXELS, "network": make_network(kind, NUM_PIXELS, seed=seed)}, {"x_test": x_test, "labels_test": y_test})


def simulate_text(length: int = 32, num_data: int = 512, seed: int = 0) -> Simulated:
    """``num_data`` windows of the corpus's training part and a fresh character network."""
    x_train, x_test = load_text(length)
    return Simulated({"x": x_train[:num_data], "network": make_network("char", seed=seed)}, {"x_test": x_test[:256]})


# --------------------------------------------------------------------------------------------
# what the tour shows


def _trained(result: Any) -> Optional[torch.nn.Module]:
    modules = result.diagnostics.get("modules", {}) if result is not None else {}
    return next(iter(modules.values()), None)


def report(example: Example, simulated: Simulated, result: Any) -> list[Any]:
    """Figures for the tour: held-out NLL, bits/dim and perplexity; generated digits, or text
    sampled at several temperatures and top-p values side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppgen

    network = _trained(result) or simulated.data.get("network")
    if network is None:
        return []
    x_test = simulated.truth["x_test"]
    data = {k: v for k, v in simulated.data.items() if k not in ("x", "network")}
    log_p = ppgen.score(example.model, x_test, network=network, engine="enumerate", **data).value
    numbers = per_symbol(log_p, len(x_test), x_test.shape[1])
    summary = f"held-out: {numbers['nats_per_datum']:.2f} nats/datum, {numbers['bits_per_dim']:.3f} bits/dim, perplexity {numbers['perplexity']:.2f}"
    if example.model is char_model:
        rows = []
        for options in ({"temperature": 0.5}, {"temperature": 1.0}, {"temperature": 1.5}, {"top_p": 0.9}, {"top_p": 0.5}):
            draws = ppgen.generate(char_model, num_data=1, length=60, network=network, seed=0, **options)
            text = decode([draws[f"x_{t}"][0, 0] for t in range(60)])
            rows.append(f"{', '.join(f'{k}={v}' for k, v in options.items()):>16}: {text!r}")
        figure, axis = plt.subplots(figsize=(10, 2.4))
        axis.axis("off")
        axis.text(0, 1, summary + "\n\n" + "\n".join(rows), va="top", family="monospace", fontsize=7)
        return [figure]
    D = int(simulated.data.get("D", NUM_PIXELS))
    draws = ppgen.generate(example.model, num_data=48, D=D, network=network, seed=0)
    images = np.stack([draws[f"x_{i}"][0] for i in range(D)], -1)
    figure, axis = plt.subplots(figsize=(6, 4.4))
    image_grid(axis, images, 6, f"{example.name} digits (ancestral samples)\n{summary}")
    return [figure]


_QUICK_MLE = {"optimizer": "adam", "learning_rate": 0.01, "subsample_size": 100, "num_steps": 150}
_SKIP = ("advi", "map", "importance", "nuts", "hmc", "gibbs", "mh", "meanfield", "cavi", "em", "svi", "beam")

EXAMPLES = [
    Example(
        "nade",
        nade,
        simulate_digits,
        "NADE on scikit-learn's 8×8 binarised digits: 64 Bernoulli sites, shared hidden layer updated incrementally",
        options={"mle": _QUICK_MLE},
        skip=_SKIP,
        report=report,
    ),
]

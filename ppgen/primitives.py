"""The ppgen language: the primitives a model program is written with.

Each primitive forwards to Pyro or NumPyro, whichever backend is current
(:func:`ppgen.backend.use_backend`), so one program runs unchanged on both. ``dist`` and
``ops`` are the ``pyroapi`` namespaces: ``dist.Normal`` is ``pyro.distributions.Normal`` on
Pyro and ``numpyro.distributions.Normal`` on NumPyro; ``ops`` is ``torch`` or ``jax.numpy``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import pyro
from pyroapi import distributions as dist
from pyroapi import ops

from ppgen._transform_cache import forget_cached_pairs
from ppgen.backend import current_backend

__all__ = ["sample", "plate", "param", "deterministic", "factor", "module", "markov", "chain", "carry", "dist", "ops"]

_NOT_GIVEN = object()

#: Key set in a site's ``infer`` dict when the program passed ``obs=`` (possibly ``None``): the
#: site is data by declaration, even in a run where no data was supplied.
DATA_SITE = "ppgen_data"

#: An interpreter the primitives dispatch to instead of Pyro (see :func:`interpreted_by`).
_INTERPRETER: Any = None

#: The iterations ``markov(iterable)`` yields while :func:`markov_window` is active.
_MARKOV_WINDOW: Optional[slice] = None

#: (t, x_t) while :func:`chain_steps` is active: ``chain`` runs its declared step once there.
_CHAIN_STEPS: Optional[tuple[Any, Any]] = None

#: Key set in the ``infer`` dict of the sites ``chain`` samples: the chain's name.
CHAIN_SITE = "ppgen_chain"


@contextmanager
def interpreted_by(interpreter: Any) -> Iterator[None]:
    """Run the primitives on ``interpreter`` (an object with methods ``sample(name, fn, obs,
    infer)``, ``plate``, ``param``, ``deterministic``, ``factor``, ``module`` and ``markov`` taking
    the primitives' arguments) rather than on Pyro's handler stack: an engine that knows the
    whole program's semantics (exact enumeration) runs it without Pyro's per-site messaging."""
    global _INTERPRETER
    previous, _INTERPRETER = _INTERPRETER, interpreter
    try:
        yield
    finally:
        _INTERPRETER = previous


@contextmanager
def markov_window(start: int, stop: int) -> Iterator[None]:
    """Make ``for t in markov(iterable)`` run only iterations ``start`` to ``stop - 1``: an
    engine evaluates a few steps of a long Markov chain program (the step-sampled ELBO of a
    diffusion program) without running the others. The program's state entering iteration
    ``start`` is the caller's to provide (by fixing the chain's first site)."""
    global _MARKOV_WINDOW
    previous, _MARKOV_WINDOW = _MARKOV_WINDOW, slice(start, stop)
    try:
        yield
    finally:
        _MARKOV_WINDOW = previous


@contextmanager
def chain_steps(t: Any, x_t: Any) -> Iterator[None]:
    """Make every :func:`chain` run its declared step once, at the steps ``t`` (an integer
    tensor, one step per datum of the data plate) from the states ``x_t``, instead of unrolling:
    it records its first site ``{name}_T`` (its law only, the value given as x_t) and then the
    site ``name`` from ``step(x_t, t)``, both marked :data:`CHAIN_SITE`. An engine evaluates
    one step per datum of a long chain in one call of the step (the step-sampled ELBO of a
    diffusion program), each datum at its own t."""
    global _CHAIN_STEPS
    previous, _CHAIN_STEPS = _CHAIN_STEPS, (t, x_t)
    try:
        yield
    finally:
        _CHAIN_STEPS = previous


def _numpyro():
    import numpyro

    return numpyro


def sample(name: str, fn: Any, obs: Any = _NOT_GIVEN, infer: Optional[dict] = None) -> Any:
    """Draw ``name`` from distribution ``fn``, or condition on ``obs``.

    Passing ``obs=x`` declares the site observed data; with ``x=None`` the site is sampled
    (prior predictive) but still drawn and reported as data.
    """
    infer = dict(infer or {})
    if obs is not _NOT_GIVEN:
        infer[DATA_SITE] = True
    else:
        obs = None
    forget_cached_pairs(fn)  # a transform's (x, f(x)) from an earlier run is stale now
    if _INTERPRETER is not None:
        return _INTERPRETER.sample(name, fn, obs, infer)
    if current_backend() == "numpyro":
        return _numpyro().sample(name, fn, obs=obs, infer=infer)
    return pyro.sample(name, fn, obs=obs, infer=infer)


def plate(name: str, size: int, subsample_size: Optional[int] = None, dim: Optional[int] = None):
    """A conditionally independent batch of size ``size`` (Pyro/NumPyro ``plate``)."""
    if _INTERPRETER is not None:
        return _INTERPRETER.plate(name, size, subsample_size, dim)
    if current_backend() == "numpyro":
        return _numpyro().plate(name, size, subsample_size=subsample_size, dim=dim)
    return pyro.plate(name, size, subsample_size=subsample_size, dim=dim)


def param(name: str, init_value: Any = None, constraint: Any = None, event_dim: Optional[int] = None) -> Any:
    """A learnable parameter with initial value ``init_value`` in ``constraint``'s support."""
    if _INTERPRETER is not None:
        return _INTERPRETER.param(name, init_value, constraint, event_dim)
    kwargs: dict[str, Any] = {}
    if constraint is not None:
        kwargs["constraint"] = constraint
    if event_dim is not None:
        kwargs["event_dim"] = event_dim
    if current_backend() == "numpyro":
        return _numpyro().param(name, init_value, **kwargs)
    if init_value is not None:
        import torch

        init_value = torch.as_tensor(init_value)
    return pyro.param(name, init_value, **kwargs)


def deterministic(name: str, value: Any) -> Any:
    """Record ``value``, a function of other sites, as the named site ``name``."""
    if _INTERPRETER is not None:
        return _INTERPRETER.deterministic(name, value)
    if current_backend() == "numpyro":
        return _numpyro().deterministic(name, value)
    return pyro.deterministic(name, value)


def factor(name: str, log_factor: Any) -> None:
    """Add ``log_factor`` to the model's log density (an unnormalised potential)."""
    if _INTERPRETER is not None:
        return _INTERPRETER.factor(name, log_factor)
    if current_backend() == "numpyro":
        return _numpyro().factor(name, log_factor)
    return pyro.factor(name, log_factor)


def module(name: str, nn_module: Any) -> Any:
    """Register a ``torch.nn.Module``'s parameters as learnable ``param`` sites named ``name``."""
    if _INTERPRETER is not None:
        return _INTERPRETER.module(name, nn_module)
    if current_backend() == "numpyro":
        raise NotImplementedError(
            f"ppgen.module({name!r}, ...): programs with torch modules run on the Pyro backend; "
            "use backend='pyro'"
        )
    from pyro.poutine.runtime import _PYRO_STACK

    for handler in _PYRO_STACK:  # the structure tracer draws the module as a parameter node
        if hasattr(handler, "register_module"):
            handler.register_module(name, nn_module)
    return pyro.module(name, nn_module)


def carry(name: str, value: Any, event_dim: int = 0) -> Any:
    """Declare ``value`` as state the program carries past a decided site (a recurrent network's
    hidden state, a running sum, an earlier site's value): ``h = carry("h", h)``.

    The identity in every run but one. Beam search (``engine="beam"``, :mod:`ppgen.inference.beam`)
    runs the program once with its B beams as a batch dimension left of the program's plates;
    at each finite latent site it keeps the B best (beam, value) pairs, so beam j now continues
    beam ``parents[j]``, and ``carry`` returns ``value`` reordered to match (``value[parents]``
    along the beams' dimension, composed over the decisions made since ``value`` was: a site's
    value and a tensor ``carry`` returned are known; any other tensor is taken to be computed
    after the last ``carry`` of ``name``, or, the first time, before the latest decision).
    Where to call it: right after each latent site, on every tensor computed before that site
    and used after it, before combining it with the site's value::

        x = sample(f"x_{t}", dist.Categorical(logits=readout(h)))
        h = carry("h", h)
        h = cell(x, h)

    One name per carried tensor. A program that never calls ``carry`` is searched by re-running
    it up to each decision instead (exact, O(L²) for L latent sites).

    Parameters
    ----------
    name : names the carried tensor (the same name at every step).
    value : the tensor, of shape (*batch_shape, *event_shape); anything else is returned as is.
    event_dim : number of rightmost dimensions of ``value`` that are not batch dimensions
        (1 for a hidden state of shape (..., H)).
    """
    if isinstance(event_dim, bool) or not isinstance(event_dim, int) or event_dim < 0:
        raise ValueError(f"carry({name!r}): event_dim must be an integer >= 0, got {event_dim!r}")
    if _INTERPRETER is not None:  # beam search's handler-free run reorders; other interpreters keep it
        reorder = getattr(_INTERPRETER, "reorder_carried", None)
        return value if reorder is None else reorder(name, value, event_dim)
    from pyro.poutine.runtime import _PYRO_STACK

    for handler in _PYRO_STACK:  # beam search's handler, when one is running
        reorder = getattr(handler, "reorder_carried", None)
        if reorder is not None:
            return reorder(name, value, event_dim)
    return value


def markov(fn: Optional[Callable] = None, history: int = 1, keep: bool = False):
    """Mark sequential latents as Markov with the given ``history``, so enumeration over a
    chain of length T costs O(T K^2) rather than O(K^T). Use as ``for t in markov(range(T))``
    or as a context manager."""
    if _MARKOV_WINDOW is not None and fn is not None and not callable(fn):
        import itertools

        fn = itertools.islice(fn, _MARKOV_WINDOW.start, _MARKOV_WINDOW.stop)
    if _INTERPRETER is not None:
        return _INTERPRETER.markov(fn, history, keep)
    if current_backend() == "numpyro":
        from numpyro.contrib.funsor import markov as numpyro_markov

        return numpyro_markov(fn, history=history, keep=keep)
    return pyro.markov(fn, history=history, keep=keep)


def chain(name: str, num_steps: int, init: Any, step: Callable[[Any, Any], Any], obs: Any = _NOT_GIVEN) -> Any:
    """A Markov chain declared by its step: x_T ~ ``init``, x_{t−1} | x_t ~ ``step(x_t, t)`` for
    t = T, …, 1, with sites ``{name}_T``, …, ``{name}_1`` and ``name`` (x_0, observed when ``obs``
    is given). Returns x_0's value.

    It is the loop ::

        x = sample(f"{name}_{T}", init)
        for t in markov(range(T, 0, -1)):
            x = sample(f"{name}_{t - 1}" if t > 1 else name, step(x, t), obs=obs if t == 1 else ...)

    and every engine, diagram and structure sees exactly those sites. Declaring the step as a
    function says more than the loop: ``step`` computes the law of x_{t−1} for *any* t, so an
    engine may call it once with a tensor of steps, one per datum (:func:`chain_steps`; svi's
    step-sampled ELBO of a diffusion program does), or run the chain without per-site messaging
    when nothing reads the intermediate sites.

    Parameters
    ----------
    name : the last site's name; the latents are ``{name}_{t}``.
    num_steps : T ≥ 1.
    init : the law of x_T (a distribution, batched by the enclosing plates).
    step : ``step(x_t, t) -> distribution of x_{t−1}``; ``t`` is an integer tensor (``ops``'
        backend) broadcastable against x_t's batch shape: a 0-d tensor in the unrolled chain, one
        step per datum (shape ``x_t.shape[:-event_dim]``) when an engine runs all data at once.
        Index per-step constants as ``table[t]`` and broadcast them with ``[..., None]``.
    obs : the observed x_0 (``None`` declares it data to be drawn); omitted, x_0 is latent.

    Examples
    --------
    >>> import torch, ppgen
    >>> def walk(x=None):
    ...     with ppgen.plate("N", 3):
    ...         return ppgen.chain("x", 4, ppgen.dist.Normal(0.0, 1.0),
    ...                            lambda x_t, t: ppgen.dist.Normal(0.9 * x_t, 0.1 * t), obs=x)
    >>> sorted(ppgen.inspect(walk).sites)
    ['x', 'x_1', 'x_2', 'x_3', 'x_4']
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"chain({name!r}): num_steps must be a positive integer, got {num_steps!r}")
    if not callable(step):
        raise TypeError(f"chain({name!r}): step must be a function (x_t, t) -> distribution, got {type(step).__name__}")
    marker = {CHAIN_SITE: name}
    last = {} if obs is _NOT_GIVEN else {"obs": obs}
    if _CHAIN_STEPS is not None:
        t, x_t = _CHAIN_STEPS
        sample(f"{name}_{num_steps}", init, obs=x_t, infer=marker)  # its law is what is read: no draw
        return sample(name, step(x_t, t), infer=marker, **last)
    array = ops.array if current_backend() == "numpyro" else ops.tensor
    x = sample(f"{name}_{num_steps}", init, infer=marker)
    for t in markov(range(num_steps, 0, -1)):
        law = step(x, array(t))
        x = sample(f"{name}_{t - 1}", law, infer=marker) if t > 1 else sample(name, law, infer=marker, **last)
    return x

"""Adversarial learning of a program's parameters: ``engine="adversarial"``.

For a program whose observed sites can be drawn by a reparameterised path from its parameters
θ, x = g_θ(ε) (an implicit model ``x = G(z)`` written as a ``Delta`` observation, a decoder with
Gaussian noise, any ``rsample``-able distribution), a critic D_ψ compares minibatches of data
with minibatches drawn from the program, and θ moves to fool it (Goodfellow et al. 2014):

    minimax          critic:    min_ψ  E_data[softplus(−D(x))] + E_θ[softplus(D(x̃))]
                                       (= −E log σ(D(x)) − E log(1 − σ(D(x̃))), D returns a logit)
                     generator: min_θ  −E_θ[softplus(D(x̃))]          (= E log(1 − σ(D(x̃))))
    non-saturating   critic as minimax; generator: min_θ E_θ[softplus(−D(x̃))]   (= −E log σ(D(x̃)))
    wgan-gp          critic:    min_ψ  E_θ[D(x̃)] − E_data[D(x)] + λ E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²],
                                x̂ = εx + (1 − ε)x̃, ε ~ U(0, 1) per pair (Gulrajani et al. 2017)
                     generator: min_θ  −E_θ[D(x̃)]

x̃ are the program's own draws of its observed sites (the program run with its observations
removed, ``poutine.uncondition``), so the gradient reaches θ through every reparameterised site
upstream. With a logit d = D(x̃), the minimax generator gradient is −σ(d) ∂d/∂θ, which vanishes
where the critic rejects the draws (σ(d) → 0, early in training); the non-saturating one is
−(1 − σ(d)) ∂d/∂θ, which does not. Each generator step follows ``num_critic_steps`` critic steps
(5 for wgan-gp, 1 otherwise), each on a fresh minibatch of data and of draws.

The critic sees each datum's observed values flattened and concatenated (all observed sites of
the data plate, in program order); by default it is an MLP with two hidden layers of 128 leaky
ReLU units. The program's latents are drawn from the prior (nothing is inferred), so there is
no ``log_evidence``: an implicit model has no density to bound.

References
----------
Goodfellow et al. (2014), Generative adversarial nets. NeurIPS.
Gulrajani et al. (2017), Improved training of Wasserstein GANs. NeurIPS.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import torch
from pyro.poutine.messenger import Messenger

from ppgen.backend import torch_precision, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.driver import NonFiniteStep, iterate
from ppgen.engine import Engine, data_not_given, register
from ppgen.errors import EngineFailure
from ppgen.models._networks import seeded_mlp
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

from ._distributed import Shard, ShardedBatch, draw_for_batch, is_writer, world
from ._draw_interpreter import DrawInterpreter, same_draws
from ._gradient_steps import TouchedParameters, copy_modules, named_modules, sliced
from ._vi import Info, param_values, pyro_arguments

LOSSES = ("minimax", "non-saturating", "wgan-gp")
CRITIC_HIDDEN = (128, 128)


# --------------------------------------------------------------------------------------------
# the losses (pure functions of critic outputs, so tests can check them against the formulas)


def critic_loss(
    loss: str, critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, penalty: float = 10.0, shard: Optional[Shard] = None
) -> torch.Tensor:
    """The critic's loss on data ``real`` and draws ``fake``, each of shape (batch, num_features).

    ``minimax`` / ``non-saturating``: the logistic loss E softplus(−D(x)) + E softplus(D(x̃));
    ``wgan-gp``: E D(x̃) − E D(x) + ``penalty`` · E (‖∇D(x̂)‖₂ − 1)² (see the module docstring).
    ``shard``: under torch.distributed, the rank's rows of the global batch (the penalty's ε).
    """
    real_score, fake_score = _score(critic, real), _score(critic, fake)
    if loss == "wgan-gp":
        value = fake_score.mean() - real_score.mean()
        if penalty:
            value = value + penalty * gradient_penalty(critic, real, fake, shard)
        return value
    return torch.nn.functional.softplus(-real_score).mean() + torch.nn.functional.softplus(fake_score).mean()


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, shard: Optional[Shard] = None) -> torch.Tensor:
    """E (‖∇_x̂ D(x̂)‖₂ − 1)² at x̂ = εx + (1 − ε)x̃, one ε ~ U(0, 1) per pair (the torch global
    generator; under torch.distributed drawn for the global batch, ``shard`` the rank's rows),
    differentiable in the critic's parameters (``create_graph``)."""
    uniform = lambda n: torch.rand(n, 1, dtype=real.dtype, device=real.device)  # noqa: E731
    epsilon = draw_for_batch(uniform, real.shape[0], shard)
    mixed = (epsilon * real + (1 - epsilon) * fake.detach()).requires_grad_(True)
    (gradient,) = torch.autograd.grad(_score(critic, mixed).sum(), mixed, create_graph=True)
    return ((gradient.norm(dim=1) - 1) ** 2).mean()


def generator_loss(loss: str, fake_score: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the critic's outputs (logits for minimax / non-saturating) on
    the program's draws: −E softplus(d), E softplus(−d) or −E d."""
    if loss == "minimax":
        return -torch.nn.functional.softplus(fake_score).mean()
    if loss == "non-saturating":
        return torch.nn.functional.softplus(-fake_score).mean()
    return -fake_score.mean()


def _score(critic: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return critic(x).reshape(x.shape[0])


def default_critic(num_features: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.nn.Sequential:
    """The default critic: an MLP num_features → 128 → 128 → 1 with leaky ReLU (slope 0.2)."""
    return seeded_mlp([num_features, *CRITIC_HIDDEN, 1], torch.Generator().manual_seed(seed), lambda: torch.nn.LeakyReLU(0.2), dtype)


# --------------------------------------------------------------------------------------------
# drawing the observed sites from the program


class _DrawObserved(Messenger):
    """Samples the observed sites ``names`` from their distributions instead of conditioning on
    the data (reparameterised: ``rsample``), and keeps the drawn values."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.values: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.names:
            msg["is_observed"] = False
            msg["value"] = None

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] in self.names:
            self.values[msg["name"]] = msg["value"]


@dataclass(frozen=True)
class _DataLayout:
    """Where each datum sits in the observed sites' values: the data plate, its size, and per
    observed site the dimension of its value that the plate indexes."""

    plate: str
    size: int
    positions: dict[str, int]

    def features(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The observed values as one (batch, num_features) matrix."""
        columns = []
        for name, position in self.positions.items():
            value = values[name].movedim(position, 0)
            columns.append(value.reshape(value.shape[0], -1))
        return torch.cat(columns, dim=1) if len(columns) > 1 else columns[0]


def _data_plate(structure: ModelStructure) -> Optional[str]:
    """The largest plate holding every observed site, or None."""
    shared = set.intersection(*(set(site.plates) for site in structure.observed.values()))
    return max(shared, key=lambda name: structure.plates[name].size) if shared else None


@register
class Adversarial(Engine):
    """Adversarial learning of a program's ``param`` sites and modules (GAN training).

    Parameters
    ----------
    loss : ``"minimax"``, ``"non-saturating"`` or ``"wgan-gp"`` (see the module docstring).
    critic : a ``torch.nn.Module`` mapping (batch, num_features) to (batch,) or (batch, 1)
        scores (logits for minimax / non-saturating), num_features the size of one datum's
        observed values; None for an MLP num_features → 128 → 128 → 1 seeded by ``seed``.
    num_steps : generator steps.
    num_critic_steps : critic steps before each generator step (None: 5 for wgan-gp, else 1).
    penalty : λ, the gradient penalty's weight (wgan-gp only; None: 10).
    learning_rate, critic_learning_rate : Adam step sizes of the program's parameters and of the
        critic (None: the same as ``learning_rate``).
    betas : Adam's (β₁, β₂) for both optimisers ((0.5, 0.9) as Gulrajani et al.).
    subsample_size : minibatch size B over the data plate (None: every datum each step); the
        program is run on the minibatch's arguments (each argument whose leading dimension is
        the plate's size is sliced), so it draws B values. Under ``torchrun`` each of the P
        processes takes B / P of every global batch (B, or N without minibatches, divisible by
        P) and the gradients are averaged: the single process's run at the same global batch
        and seed (:mod:`ppgen.inference._distributed`; ``diagnostics["processes"]`` = P).
    copy_modules : train copies of the torch modules among the arguments and of ``critic``
        (the originals stay untouched); the trained ones are in ``Result.diagnostics["modules"]``.
    seed, progress : seed (torch's generator, restored afterwards) and progress bar.
    checkpoint, checkpoint_every : save the run every ``checkpoint_every`` steps, on SIGINT /
        SIGTERM and at the end; the same call resumes from it (see :mod:`ppgen.checkpoint`).

    Returns a :class:`~ppgen.Result` with ``params`` (the parameter store after training,
    modules as ``name$$$weight``), ``diagnostics["modules"]`` (the trained modules by name, the
    critic as ``"critic"``), ``traces["critic_loss"]`` (the last critic step's loss of each
    generator step) and ``traces["generator_loss"]``; no ``log_evidence``.

    Examples
    --------
    >>> import ppgen, torch
    >>> from ppgen.models.gan import gan, make_generator
    >>> from ppgen.models._toy2d import sample_toy2d
    >>> x = sample_toy2d("8gaussians", 256, seed=0)
    >>> fit = ppgen.learn(gan, x=x, generator=make_generator(), engine="adversarial", num_steps=20)
    >>> sorted(fit.diagnostics["modules"])
    ['critic', 'generator']
    """

    name = "adversarial"
    tasks = frozenset({"learn"})
    summary = "adversarial learning (GAN: minimax, non-saturating, WGAN-GP) of programs with reparameterised observations"

    def __init__(
        self,
        loss: str = "non-saturating",
        critic: Optional[torch.nn.Module] = None,
        num_steps: int = 2000,
        num_critic_steps: Optional[int] = None,
        penalty: Optional[float] = None,
        learning_rate: float = 1e-4,
        critic_learning_rate: Optional[float] = None,
        betas: tuple[float, float] = (0.5, 0.9),
        subsample_size: Optional[int] = None,
        copy_modules: bool = True,
        seed: int = 0,
        progress: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 100,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"Adversarial: loss must be one of {LOSSES}, got {loss!r}")
        if critic is not None and not isinstance(critic, torch.nn.Module):
            raise TypeError(f"Adversarial: critic must be a torch.nn.Module or None, got {type(critic).__name__}")
        for option, value in (("num_steps", num_steps), ("num_critic_steps", num_critic_steps), ("subsample_size", subsample_size)):
            if value is None and option != "num_steps":
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Adversarial: {option} must be a positive integer{'' if option == 'num_steps' else ' or None'}, got {value!r}")
        if penalty is not None:
            if loss != "wgan-gp":
                raise ValueError(f"Adversarial: penalty is the gradient penalty's weight of loss='wgan-gp'; loss={loss!r} has none")
            if not (isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and penalty >= 0):
                raise ValueError(f"Adversarial: penalty must be a non-negative number, got {penalty!r}")
        for option, value in (("learning_rate", learning_rate), ("critic_learning_rate", critic_learning_rate)):
            if value is None and option == "critic_learning_rate":
                continue
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"Adversarial: {option} must be a positive number, got {value!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"Adversarial: betas must be two numbers in [0, 1), got {betas!r}")
        check_checkpoint_options("Adversarial", checkpoint, checkpoint_every)
        self.loss = loss
        self.critic = critic
        self.num_steps = int(num_steps)
        self.num_critic_steps = int(num_critic_steps) if num_critic_steps is not None else (5 if loss == "wgan-gp" else 1)
        self.penalty = float(penalty) if penalty is not None else (10.0 if loss == "wgan-gp" else 0.0)
        self.learning_rate = float(learning_rate)
        self.critic_learning_rate = float(critic_learning_rate) if critic_learning_rate is not None else self.learning_rate
        self.betas = (float(betas[0]), float(betas[1]))
        self.subsample_size = None if subsample_size is None else int(subsample_size)
        self.copy_modules = copy_modules
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = data_not_given(structure)
        if reason:
            return reason
        if not structure.observed:
            return "the program has no observed site to learn from"
        for site in structure.observed.values():
            if not site.reparameterized:
                return (
                    f"observed site {site.name!r} ({site.distribution}) has no reparameterised sampler, so its draws are not "
                    "a differentiable function of the parameters; adversarial learning needs one (an implicit x = G(z) as a "
                    "Delta observation, a Normal, ...)"
                )
        for site in structure.latent.values():
            if not site.reparameterized:
                return (
                    f"latent site {site.name!r} ({site.distribution}) has no reparameterised sampler, so the gradient of "
                    "the generated data cannot pass through it"
                )
        if not structure.params:
            return "the program has no param site or module to learn"
        if _data_plate(structure) is None:
            names = ", ".join(repr(name) for name in structure.observed)
            return f"no plate holds every observed site ({names}); adversarial learning compares batches of data with batches of draws, one per element of a data plate"
        return None

    # ---- run -----------------------------------------------------------------------------------
    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        layout = self._layout(structure)
        checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
        with use_backend("pyro"), torch_precision(), torch.random.fork_rng(), pyro.get_param_store().scope():
            store = pyro.get_param_store()
            store.clear()
            torch.manual_seed(self.seed)
            copies: dict[int, torch.nn.Module] = {}
            if self.copy_modules:
                args, kwargs = copy_modules(args, copies), copy_modules(kwargs, copies)
            args, kwargs = pyro_arguments(args, kwargs)
            trainer = _Trainer(self, model, layout, args, kwargs)
            training_start = time.perf_counter()
            progress = trainer.train(checkpoint)
            training_seconds = time.perf_counter() - training_start
            params = param_values(store)
            modules = named_modules(None, copies, args, kwargs, store)
        modules["critic"] = trainer.critic
        return Result(
            engine=self.name,
            params=params,
            traces={"critic_loss": np.asarray(progress.objectives), "generator_loss": np.asarray(trainer.generator_losses)},
            num_iterations=progress.num_iterations,
            interrupted=progress.interrupted,
            diagnostics={
                "loss": self.loss,
                "num_critic_steps": self.num_critic_steps,
                "penalty": self.penalty,
                "subsample_size": self.subsample_size,
                "subsample_plate": layout.plate,
                "modules": Info(modules),
                "training_seconds": training_seconds,
                "processes": 1 if trainer.sharded is None else trainer.sharded.world.size,  # data-parallel ranks (torch.distributed)
            },
            seconds=time.perf_counter() - start,
        )

    def _layout(self, structure: ModelStructure) -> _DataLayout:
        plate = structure.plates[_data_plate(structure)]
        if plate.dim is None:
            raise ValueError(f"Adversarial: the data plate {plate.name!r} has no tensor dimension (a sequential plate); use a vectorised ppgen.plate")
        positions = {name: plate.dim - len(site.event_shape) for name, site in structure.observed.items()}
        return _DataLayout(plate.name, plate.size, positions)


class _Trainer:
    """The alternating updates of one run: the critic's Adam and the program's Adam, the data
    as a (N, num_features) matrix, and the minibatch order."""

    def __init__(self, engine: Adversarial, model: Callable, layout: _DataLayout, args: tuple, kwargs: dict) -> None:
        self.engine, self.model, self.layout = engine, model, layout
        self.args, self.kwargs = args, kwargs
        self.names = tuple(layout.positions)
        with torch.no_grad():
            observed = pyro.poutine.trace(pyro.poutine.block(model, hide_types=["param"])).get_trace(*args, **kwargs)
        self.data = layout.features({name: observed.nodes[name]["value"] for name in self.names}).detach()
        critic = engine.critic
        if critic is None:
            critic = default_critic(self.data.shape[1], engine.seed, self.data.dtype)
        elif engine.copy_modules:
            critic = copy_modules(critic, {})
        self.critic = critic
        # Adam's multi-tensor implementation: the same update element by element as the default
        # one-tensor-at-a-time loop (which torch picks on the CPU), in a few fused calls
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=engine.critic_learning_rate, betas=engine.betas, foreach=True)
        self.batch = layout.size if engine.subsample_size is None else min(engine.subsample_size, layout.size)
        # under torch.distributed: each rank its rows of every global batch, gradients averaged
        ranks = world()
        self.sharded = None if ranks is None else ShardedBatch(ranks, layout.plate, self.batch, "Adversarial")
        self.order = {"permutation": torch.randperm(layout.size), "position": 0}
        self.generator_losses: list[float] = []
        self.parameters: Optional[dict[int, torch.Tensor]] = None
        self.interpreter: Optional[DrawInterpreter] = None  # set once it is shown to draw as Pyro does
        self.generator_optimizer: Optional[torch.optim.Optimizer] = None
        self._set_up_generator()

    # ---- minibatches ---------------------------------------------------------------------------
    def _next_index(self) -> Optional[torch.Tensor]:
        """The next minibatch's data indices (without replacement within an epoch), or None for
        full batches; under torch.distributed the rank's part of them."""
        index = self._next_global_index()
        return index if self.sharded is None else self.sharded.rows(index)

    def _next_global_index(self) -> Optional[torch.Tensor]:
        if self.batch == self.layout.size:
            return None
        if self.order["position"] + self.batch > self.layout.size:
            self.order["permutation"], self.order["position"] = torch.randperm(self.layout.size), 0
        position = self.order["position"]
        self.order["position"] = position + self.batch
        return self.order["permutation"][position:position + self.batch]

    def _arguments(self, index: Optional[torch.Tensor]) -> tuple[tuple, dict]:
        if index is None:
            return self.args, self.kwargs
        return (
            tuple(sliced(a, index, self.layout.size) for a in self.args),
            {k: sliced(v, index, self.layout.size) for k, v in self.kwargs.items()},
        )

    def _draw(self, index: Optional[torch.Tensor]) -> torch.Tensor:
        """The program's draws of the observed sites on the minibatch's arguments, (B, num_features)."""
        args, kwargs = self._arguments(index)
        if self.interpreter is not None:
            values = self.interpreter.run(self.model, args, kwargs)
        else:
            drawn = _DrawObserved(self.names)
            # (entered first, the global-batch noise sees the observed sites _DrawObserved frees)
            with self.sharded.noise if self.sharded is not None else nullcontext(), drawn:
                self.model(*args, **kwargs)
            values = drawn.values
        fake = self.layout.features(values)
        expected = self.layout.size if index is None else len(index)
        if fake.shape[0] != expected:
            raise ValueError(
                f"Adversarial: the program drew {fake.shape[0]} values of its observed sites for a minibatch of {expected} data; "
                f"the size of plate {self.layout.plate!r} must follow the data argument (e.g. plate(..., len(x)))"
            )
        return fake

    # ---- steps ---------------------------------------------------------------------------------
    def _set_up_generator(self) -> None:
        """One run of the program to find the unconstrained tensors behind its param sites."""
        touched = TouchedParameters()
        with touched, torch.no_grad():
            self._draw(self._next_index())
        self.order["position"] = 0
        if self.sharded is None:  # (the interpreter draws for the rank's rows only)
            self._use_interpreter_if_it_draws_the_same()
        self.parameters = touched.tensors
        if not self.parameters:
            raise ValueError("Adversarial: the program created no param site to learn")
        if self.sharded is not None:
            self.sharded.world.broadcast([*self.parameters.values(), *self.critic.parameters()])
        self.generator_optimizer = torch.optim.Adam(
            list(self.parameters.values()), lr=self.engine.learning_rate, betas=self.engine.betas, foreach=True
        )
        # the critic's trained weights (not a tensor it shares with the program), frozen in generator steps
        shared = {id(tensor) for tensor in self.parameters.values()}
        self.critic_weights = [p for p in self.critic.parameters() if p.requires_grad and id(p) not in shared]

    def _use_interpreter_if_it_draws_the_same(self) -> None:
        """Draw through :class:`DrawInterpreter` (no Pyro messages per site) from now on if,
        from one random state, it draws what the program draws under Pyro, bit for bit; else
        keep Pyro. The random stream is left where it was, so the run is the same either way."""
        interpreter = DrawInterpreter(self.names)
        index = self._next_index()
        self.order["position"] = 0
        with torch.no_grad(), pyro.validation_enabled(False):
            if same_draws(lambda: self._draw(index), lambda: self._features(interpreter, index)):
                self.interpreter = interpreter

    def _features(self, interpreter: DrawInterpreter, index: Optional[torch.Tensor]) -> torch.Tensor:
        args, kwargs = self._arguments(index)
        return self.layout.features(interpreter.run(self.model, args, kwargs))

    def _critic_step(self) -> float:
        index = self._next_index()
        with torch.no_grad():
            fake = self._draw(index)
        real = self.data if index is None else self.data[index]
        self.critic_optimizer.zero_grad()
        loss = critic_loss(self.engine.loss, self.critic, real, fake, self.engine.penalty, self.sharded and self.sharded.shard)
        loss.backward()
        value = self._closed_value(loss, "critic loss", list(self.critic.parameters()))
        self.critic_optimizer.step()
        return value

    def _generator_step(self) -> float:
        fake = self._draw(self._next_index())
        self.generator_optimizer.zero_grad()
        # the critic's weights are held fixed: backward passes through the critic to the draws
        # without computing the critic's own gradients, which the next critic step would discard
        frozen = self.critic_weights
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            loss = generator_loss(self.engine.loss, _score(self.critic, fake))
            loss.backward()
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        value = self._closed_value(loss, "generator loss", list(self.parameters.values()))
        self.generator_optimizer.step()
        return value

    def _closed_value(self, loss: torch.Tensor, what: str, tensors: list[torch.Tensor]) -> float:
        """The step's loss value once its gradients are final: under torch.distributed the mean
        over the ranks, with the gradients of ``tensors`` averaged first; then checked finite
        (:meth:`_finite_value`)."""
        if self.sharded is not None:
            loss = loss.new_tensor(self.sharded.average(loss.item(), tensors))
        return self._finite_value(loss, what, tensors)

    @staticmethod
    def _finite_value(loss: torch.Tensor, what: str, tensors: Any) -> float:
        """The loss's value, after checking that it and every gradient of ``tensors`` are finite
        (else :class:`NonFiniteStep`: the update is not applied). One synchronisation reads
        both: the loss and the gradients' norms (one fused ``torch._foreach_norm``; a NaN or
        ±∞ element makes its tensor's norm non-finite) stacked and copied out together."""
        gradients = [tensor.grad for tensor in tensors if tensor.grad is not None]
        value, *norms = torch.stack([loss.detach(), *torch._foreach_norm(gradients)]).tolist()
        if not math.isfinite(value):
            raise NonFiniteStep(f"the {what} became {value}", "lower the learning rates or rescale the data")
        if not all(map(math.isfinite, norms)):
            raise NonFiniteStep(f"a gradient of the {what} is not finite", "lower the learning rates or rescale the data")
        return value

    def step(self, state: None) -> tuple[None, float]:
        for _ in range(self.engine.num_critic_steps):
            critic_value = self._critic_step()
        self.generator_losses.append(self._generator_step())
        return state, critic_value

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, checkpoint: Optional[Checkpoint]) -> Any:
        section = checkpoint.section("adversarial", self._capture, self._restore) if checkpoint is not None else None
        try:
            # Pyro's validation checked the program on the first draw (``_set_up_generator``); the
            # same program runs at every step, so the loop draws without it
            with pyro.validation_enabled(False):
                return iterate(
                    self.step, None, num_steps=self.engine.num_steps, tol=0.0, progress=self.engine.progress and is_writer(),
                    name=self.engine.name, objective="critic_loss", warn=False, checkpoint=section,
                )
        except EngineFailure as failure:
            failure.partial.state = param_values(pyro.get_param_store())
            raise

    def _capture(self) -> dict[str, Any]:
        return {
            "params": [tensor.detach() for tensor in self.parameters.values()],
            "critic": dict(self.critic.state_dict()),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "order": dict(self.order),
            "generator_losses": list(self.generator_losses),
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        with torch.no_grad():
            for tensor, value in zip(self.parameters.values(), saved["params"]):
                tensor.copy_(value)
        self.critic.load_state_dict(saved["critic"])
        self.critic_optimizer.load_state_dict(saved["critic_optimizer"])
        self.generator_optimizer.load_state_dict(saved["generator_optimizer"])
        self.order.update(saved["order"])
        self.generator_losses[:] = saved["generator_losses"]

"""The exponential-family structure EM reads off a program: which global feeds which argument of
which site's distribution, and the closed-form M-step that follows.

*Recognition.* The program is run twice under enumeration with every global (``param`` site or
continuous latent) set to a random value in its support. A distribution argument that equals
``G[index]`` cell for cell (to rounding) in both runs, for a global G and an integer ``index``
over the site's cells (enumerated configurations × plate positions), is a **gather** of G: the
component means ``locs[z]``, the transition rows ``transition[z_prev]``, the shared ``scale``.
An argument equal in both runs is **fixed**. Anything else (``2 * locs[z] + covariate``) is
opaque to the closed forms and left to gradient steps. With random probe values, a match in two
independent runs does not happen by coincidence.

*Closed forms.* With posterior weights w over a site's cells (from the E-step) and its values x,
the expected complete-data log-likelihood of a gathered global separates by rows, and for
these (family, argument) pairs its maximiser is known (plus the global's conjugate prior, if it
is a latent with one: MAP-EM):

=====================  ===========================================  ====================
family, argument       row update                                   conjugate prior
=====================  ===========================================  ====================
Categorical probs      p_rc ∝ Σ w [x = c] (+ α_c − 1)               Dirichlet(α)
Bernoulli probs        p_r = (Σ w x + a − 1) / (Σ w + a + b − 2)     Beta(a, b)
Poisson rate           λ_r = (Σ w x + a − 1) / (Σ w + b)             Gamma(a, b)
Normal loc             μ_r = (Σ w x/σ² + m/s²) / (Σ w/σ² + 1/s²)    Normal(m, s)
Normal scale           σ_r² = Σ w (x − μ)² / Σ w + reg
MultivariateNormal     μ_r = Σ w x / Σ w,  Σ_r = Σ w (x − μ)(x − μ)ᵀ / Σ w + reg I
=====================  ===========================================  ====================

Applied in that order (means before scales), each given the current values of the others, the
updates form an expectation–conditional maximisation (ECM) step, which never decreases the
objective (Meng & Rubin 1993).

*Collapse.* ``reg`` (EM's ``reg_covar``, in the data's squared units, as scikit-learn's) keeps a
component that has shrunk onto one datum finite: its variance tends to 0 and its likelihood to
+∞ without it. A row is reported as **collapsed** (:func:`update` records it in the M-step's
cache under ``"collapsed"``) when its responsibility mass Σ w is below one datum or its
(smallest) variance before regularisation is at most ``reg``; with ``reg = 0`` a variance of
zero, or a covariance that is not positive definite, raises :class:`~ppgen.driver.NonFiniteStep`.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin

from ppgen.driver import NonFiniteStep
from ppgen.inference._discrete import Enumeration, _padded, compact, given_arguments, threads_for, unwrap

EPS = 10 * torch.finfo(torch.float64).eps  # as scikit-learn: keeps empty components finite


# --------------------------------------------------------------------------------------------
# Recognition


@dataclass(frozen=True)
class Fixed:
    """An argument that does not change with the globals."""

    value: torch.Tensor


@dataclass(frozen=True)
class Gather:
    """An argument equal to ``rows(global)[index]``: rows are the global's elements grouped by
    the argument's event shape; ``index`` has the argument's (compact) batch shape."""

    name: str
    index: torch.Tensor
    event_shape: tuple[int, ...]


Argument = Union[Fixed, Gather]


@dataclass
class SiteModel:
    """A site whose distribution arguments are all fixed or gathers of globals."""

    name: str
    family: str
    cls: type
    arguments: dict[str, Argument]
    reinterpreted: int
    value: torch.Tensor
    factor_shape: tuple[int, ...]
    cache: dict[str, Any] = field(default_factory=dict)

    def gathers(self) -> dict[str, Gather]:
        return {a: g for a, g in self.arguments.items() if isinstance(g, Gather)}

    def arguments_at(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, argument in self.arguments.items():
            if isinstance(argument, Fixed):
                out[key] = argument.value
            else:
                out[key] = rows(values[argument.name], argument.event_shape)[argument.index]
        return out

    def log_prob(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The site's factor at ``values`` (may be broadcast where Pyro's would be expanded)."""
        arguments = self.arguments_at(values)
        if self.cache.get("natural"):
            log_p = _mvn_log_prob_by_features(self, arguments)
        else:
            log_p = self.cls(**arguments, validate_args=False).log_prob(self.value)
            if self.reinterpreted:
                log_p = log_p.sum(tuple(range(-self.reinterpreted, 0)))
        return log_p


def rows(value: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor:
    """A global as a stack of rows of ``event_shape``: shape (R, *event_shape)."""
    return value.reshape((-1,) + tuple(event_shape))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a few rounding errors: a distribution may renormalise what it is given
    (Categorical divides ``probs`` by their sum)."""
    return a.shape == b.shape and bool(torch.all((a - b).abs() <= 1e-9 * b.abs() + 1e-300))


def _match(argument: torch.Tensor, global_value: torch.Tensor, event_rank: int) -> Optional[torch.Tensor]:
    """``index`` with argument == rows(global)[index] (to rounding), or None."""
    event_shape = tuple(argument.shape[argument.dim() - event_rank:]) if event_rank else ()
    if tuple(global_value.shape[global_value.dim() - event_rank:] if event_rank else ()) != event_shape:
        return None
    if global_value.numel() == 0 or argument.numel() == 0:
        return None
    table = global_value.reshape(-1, max(1, math.prod(event_shape)))
    cells = argument.reshape(-1, table.shape[1])
    keys, order = torch.sort(table[:, 0])
    position = torch.searchsorted(keys, cells[:, 0].contiguous())
    above = position.clamp(max=keys.shape[0] - 1)
    below = (position - 1).clamp(min=0)
    nearer = torch.where((keys[above] - cells[:, 0]).abs() <= (keys[below] - cells[:, 0]).abs(), above, below)
    index = order[nearer]
    if not _close(cells, table[index]):
        return None
    return index.reshape(argument.shape[: argument.dim() - event_rank])


def recognise(
    first: Enumeration,
    second: Enumeration,
    probes: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    depends: dict[str, set[str]],
) -> tuple[dict[str, SiteModel], dict[str, str]]:
    """Site models for every site of ``first`` whose arguments are fixed or gathers.

    ``probes`` are the two random settings of the globals the runs used; ``depends`` maps each
    site to the globals it depends on (from the program's structure). Returns the site models
    and, for the others, why not.
    """
    models: dict[str, SiteModel] = {}
    opaque: dict[str, str] = {}
    for factor in first.factors:
        name = factor.site
        site_a, site_b = first.trace.nodes[name], second.trace.nodes[name]
        if site_a["mask"] is not None or not _is_one(site_a["scale"]):
            opaque[name] = "masked or scaled site"
            continue
        base_a, reinterpreted = unwrap(site_a["fn"])
        base_b, _ = unwrap(site_b["fn"])
        if not isinstance(base_a, TorchDistributionMixin) or type(base_a).__name__ == "Unit":
            opaque[name] = f"{type(base_a).__name__} is not a parametric distribution"
            continue
        args_a, args_b = given_arguments(base_a), given_arguments(base_b)
        arguments: dict[str, Argument] = {}
        for key, value_a in args_a.items():
            value_b = args_b.get(key)
            if value_b is None or value_a.shape != value_b.shape:
                break
            value_a, value_b = compact(value_a), compact(value_b)
            if torch.equal(value_a, value_b):
                arguments[key] = Fixed(value_a)
                continue
            event_rank = base_a.arg_constraints[key].event_dim
            for global_name in sorted(depends.get(name, ())):
                index = _match(value_a, probes[0][global_name], event_rank)
                if index is not None and _match_with(value_b, probes[1][global_name], index, event_rank):
                    arguments[key] = Gather(global_name, index, tuple(value_a.shape[value_a.dim() - event_rank:]) if event_rank else ())
                    break
            else:
                break
        if not args_a or len(arguments) != len(args_a):
            opaque[name] = "an argument is not a fixed value or a gather of a global"
            continue
        try:  # the distribution must be rebuilt from exactly these arguments
            type(base_a)(**{k: v.value if isinstance(v, Fixed) else value for (k, v), value in zip(arguments.items(), args_a.values())}, validate_args=False)
        except (TypeError, ValueError, RuntimeError):
            opaque[name] = f"{type(base_a).__name__} cannot be rebuilt from {sorted(args_a)}"
            continue
        models[name] = SiteModel(
            name, type(base_a).__name__, type(base_a), arguments, reinterpreted, site_a["value"], tuple(factor.log_prob.shape)
        )
    return models, opaque


def _match_with(argument: torch.Tensor, global_value: torch.Tensor, index: torch.Tensor, event_rank: int) -> bool:
    event_shape = tuple(argument.shape[argument.dim() - event_rank:]) if event_rank else ()
    try:
        return _close(argument, rows(global_value, event_shape)[index])
    except (RuntimeError, IndexError):
        return False


def _is_one(scale: Any) -> bool:
    return bool(torch.all(torch.as_tensor(scale) == 1))


# --------------------------------------------------------------------------------------------
# Weighted statistics


def weighted_row_sums(weight: torch.Tensor, stat: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Σ over cells of weight · stat, grouped by the row ``index`` of each cell.

    ``weight`` and ``index`` are broadcastable over the cells; ``stat`` has the cells' shape
    plus one trailing statistic dim (S,). Sums over dims the index is constant along are done
    first by ``einsum`` (a matrix product for a mixture: (K, N) @ (N, S)), so no
    cells × S temporary is built. Returns (num_rows, S).
    """
    rank = max(weight.dim(), stat.dim() - 1, index.dim())
    w, i = _padded(weight, rank), _padded(index, rank)
    t = stat.reshape((1,) * (rank + 1 - stat.dim()) + tuple(stat.shape))
    size = t.shape[-1]
    letters = string.ascii_letters
    w_dims = [d for d in range(rank) if w.shape[d] > 1]
    t_dims = [d for d in range(rank) if t.shape[d] > 1]
    keep = [d for d in range(rank) if i.shape[d] > 1]
    present = [d for d in keep if d in w_dims or d in t_dims]
    last = letters[rank]
    equation = (
        "".join(letters[d] for d in w_dims) + "," + "".join(letters[d] for d in t_dims) + last
        + "->" + "".join(letters[d] for d in present) + last
    )
    w_squeezed = w.reshape([w.shape[d] for d in w_dims])
    t_squeezed = t.reshape([t.shape[d] for d in t_dims] + [size])
    contracted = [d for d in w_dims if d not in present]
    with threads_for(max(w.numel(), t.numel())):
        if w_dims == present + contracted and t_dims == contracted and contracted:
            # the mixture case, (configurations × data) @ (data × S): a plain matrix product
            # (einsum would first copy the data-sized operand)
            reduced = w_squeezed.reshape(-1, math.prod(w.shape[d] for d in contracted)) @ t_squeezed.reshape(-1, size)
        else:
            reduced = torch.einsum(equation, w_squeezed, t_squeezed)
    reduced = reduced.reshape([i.shape[d] if d in present else 1 for d in keep] + [size])
    reduced = reduced.expand([i.shape[d] for d in keep] + [size]).reshape(-1, size)
    flat_index = i.reshape([i.shape[d] for d in keep]).reshape(-1)
    out = torch.zeros((num_rows, size), dtype=reduced.dtype)
    return out.index_add_(0, flat_index, reduced)


def cell_weights(site: SiteModel, weight: torch.Tensor) -> torch.Tensor:
    """Factor weights broadcast to the base distribution's cells (``to_event`` dims appended)."""
    return weight.reshape(tuple(weight.shape) + (1,) * site.reinterpreted)


# --------------------------------------------------------------------------------------------
# Multivariate normal in natural parameters


def upper_triangle(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.triu_indices(d, d))  # type: ignore[return-value]


def prepare_mvn_features(site: SiteModel) -> None:
    """Cache the design matrix [x̃, x̃_d x̃_e (d ≤ e), 1] of the site's data, x̃ = x − mean(x):
    the data are constant, so both the E-step (a product with natural parameters) and the
    M-step (weighted sums) reuse it. A centre already in ``site.cache`` is kept (stochastic EM
    centres every minibatch on the first one's mean, so that their sums add up)."""
    if "design" in site.cache:
        return
    x = site.value
    d = x.shape[-1]
    flat = x.reshape(-1, d)
    centre = site.cache["centre"] if "centre" in site.cache else flat.mean(0)
    centred = flat - centre
    first, second = upper_triangle(d)
    design = torch.cat([centred, centred[:, first] * centred[:, second], torch.ones_like(centred[:, :1])], -1)
    site.cache.update(design=design, centre=centre, data_shape=tuple(x.shape[:-1]), dim=d)


def _config_only(index: torch.Tensor, data_rank: int) -> bool:
    return all(size == 1 for size in index.shape[index.dim() - data_rank:]) if data_rank else True


def mvn_precision(arguments: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(precision Λ, log det Σ) from whichever covariance argument was given."""
    if "scale_tril" in arguments:
        tril = arguments["scale_tril"]
    elif "covariance_matrix" in arguments:
        tril = torch.linalg.cholesky(arguments["covariance_matrix"])
    else:
        precision = arguments["precision_matrix"]
        return precision, -torch.logdet(precision)
    return torch.cholesky_inverse(tril), 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _mvn_log_prob_by_features(site: SiteModel, arguments: dict[str, torch.Tensor]) -> torch.Tensor:
    """log N(x | μ, Σ) = ⟨η, T(x̃)⟩ − A(η) for every configuration and datum in one matrix
    product of natural parameters (configurations × S) with the design (data × S)."""
    cache = site.cache
    d, centre = cache["dim"], cache["centre"]
    loc = arguments["loc"]
    precision, log_det = mvn_precision(arguments)
    batch = torch.broadcast_shapes(loc.shape[:-1], precision.shape[:-2])
    loc = (loc - centre).expand(batch + (d,))
    precision = precision.expand(batch + (d, d))
    log_det = log_det.expand(batch)
    first, second = upper_triangle(d)
    quadratic = precision[..., first, second] * torch.where(first == second, -0.5, -1.0).to(precision.dtype)
    linear = (precision @ loc.unsqueeze(-1)).squeeze(-1)
    constant = -0.5 * (loc * linear).sum(-1) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)
    coefficients = torch.cat([linear, quadratic, constant.unsqueeze(-1)], -1)
    data_rank = len(cache["data_shape"])
    config_shape = batch[: len(batch) - data_rank] if data_rank else batch
    values = coefficients.reshape(-1, coefficients.shape[-1]) @ cache["design"].T  # (configurations, data)
    return values.reshape(tuple(config_shape) + cache["data_shape"])


def mvn_features_apply(site: SiteModel) -> bool:
    """Whether a multivariate normal site's mean and covariance depend on the enumerated
    configuration only (not on the datum), so that its log-density is one matrix product of
    natural parameters with cached data features."""
    if site.family != "MultivariateNormal" or site.reinterpreted or site.value.dim() < 2 or not site.gathers():
        return False
    data_rank = site.value.dim() - 1
    for key, argument in site.arguments.items():
        if isinstance(argument, Gather):
            batch = argument.index
        else:
            event_rank = 1 if key == "loc" else 2
            batch = argument.value.reshape(argument.value.shape[: max(argument.value.dim() - event_rank, 0)])
        if not _config_only(batch, data_rank):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Closed-form M-step rules


@dataclass(frozen=True)
class Prior:
    """A latent global's prior with fixed arguments, broadcast to the global's shape."""

    family: str
    arguments: dict[str, torch.Tensor]


RULES: dict[tuple[str, str], str] = {
    ("Categorical", "probs"): "counts",
    ("Bernoulli", "probs"): "bernoulli",
    ("Poisson", "rate"): "poisson",
    ("Normal", "loc"): "normal_loc",
    ("Normal", "scale"): "normal_scale",
    ("MultivariateNormal", "loc"): "mvn_loc",
    ("MultivariateNormal", "scale_tril"): "mvn_cov",
    ("MultivariateNormal", "covariance_matrix"): "mvn_cov",
    ("MultivariateNormal", "precision_matrix"): "mvn_cov",
}
CONJUGATE_PRIOR = {"counts": "Dirichlet", "bernoulli": "Beta", "poisson": "Gamma", "normal_loc": "Normal"}
ORDER = ("counts", "bernoulli", "poisson", "normal_loc", "mvn_loc", "normal_scale", "mvn_cov")
_COVARIANCE_KEYS = ("scale_tril", "covariance_matrix", "precision_matrix")


def _mvn_partner(site: SiteModel, key: str) -> Optional[str]:
    if key == "loc":
        return next((k for k in _COVARIANCE_KEYS if k in site.arguments), None)
    return "loc"


def _config_free(argument: Argument, event_rank: int) -> bool:
    if isinstance(argument, Gather):
        return False
    value = argument.value
    return all(size == 1 for size in value.shape[: max(value.dim() - event_rank, 0)])


def choose_rule(name: str, uses: list[tuple[SiteModel, str]], prior: Optional[Prior], has_prior: bool) -> tuple[str, str]:
    """(rule, why) for global ``name``: a closed-form rule of :data:`RULES`, or "gradient"."""
    if not uses:
        return "gradient", "not a gathered argument of any site"
    roles = {(site.family, key) for site, key in uses}
    if len(roles) > 1:
        return "gradient", f"feeds several kinds of argument {sorted(roles)}"
    rule = RULES.get(next(iter(roles)))
    if rule is None:
        return "gradient", f"no closed form for {next(iter(roles))[0]} {next(iter(roles))[1]}"
    if has_prior:
        wanted = CONJUGATE_PRIOR.get(rule)
        if wanted is None:
            return "gradient", f"no closed form for a {rule.replace('_', ' ')} with a prior"
        if prior is None or prior.family != wanted:
            return "gradient", f"its prior is not a {wanted} with fixed arguments"
    if rule in ("mvn_loc", "mvn_cov"):
        for site, key in uses:
            partner = _mvn_partner(site, key)
            other = site.arguments.get(partner) if partner else None
            mine = site.arguments[key]
            same_rows = isinstance(other, Gather) and other.index.shape == mine.index.shape and torch.equal(other.index, mine.index)
            if not (same_rows or (other is not None and _config_free(other, 1 if partner == "loc" else 2))):
                return "gradient", "mean and covariance are not indexed alike"
    return rule, f"closed form ({rule})"


def _prior_rows(prior: Optional[Prior], key: str, shape: tuple[int, ...], event_rank: int, dtype) -> Optional[torch.Tensor]:
    if prior is None:
        return None
    value = prior.arguments[key].to(dtype).expand(shape)
    return value.reshape((-1,) + tuple(shape[len(shape) - event_rank:])) if event_rank else value.reshape(-1)


def _keep_old(new: torch.Tensor, old: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    mask = used.reshape(used.shape + (1,) * (new.dim() - used.dim()))
    return torch.where(mask, new, old)


def _statistic(cache: dict, key: tuple, sums: torch.Tensor) -> torch.Tensor:
    """Weighted sums as the M-step uses them: as computed (batch EM), or passed through the
    running average ``cache["running"]`` of stochastic EM (:mod:`ppgen.inference.em`)."""
    running = cache.get("running")
    return sums if running is None else running(key, sums)


def update(
    rule: str,
    name: str,
    uses: list[tuple[SiteModel, str]],
    values: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    prior: Optional[Prior],
    reg_covar: float,
    cache: dict,
) -> torch.Tensor:
    """The conditional maximiser of the expected complete-data log joint in global ``name``,
    the others held at ``values``. ``cache`` shares statistics between rules in one M-step."""
    current = values[name]
    dtype = current.dtype
    event_shape = uses[0][0].arguments[uses[0][1]].event_shape
    old_rows = rows(current, event_shape)
    num_rows = old_rows.shape[0]

    if rule == "counts":
        categories = event_shape[-1]
        counts = torch.zeros((num_rows, categories), dtype=dtype)
        for site, key in uses:
            onehot = torch.nn.functional.one_hot(site.value.long(), categories).to(dtype)
            counts += weighted_row_sums(cell_weights(site, weights[site.name]), onehot, site.arguments[key].index, num_rows)
        counts = _statistic(cache, (name, rule), counts)
        alpha = _prior_rows(prior, "concentration", tuple(current.shape), 1, dtype)
        used = counts.sum(-1) > 0
        if alpha is not None:
            counts = (counts + alpha - 1).clamp(min=0.0)
            used = used | (alpha.sum(-1) > categories)
        new = (counts + EPS) / (counts.sum(-1, keepdim=True) + categories * EPS)
        return _keep_old(new, old_rows, used).reshape(current.shape)

    if rule in ("bernoulli", "poisson", "normal_loc"):
        sums = torch.zeros((num_rows, 2), dtype=dtype)
        for site, key in uses:
            weight = cell_weights(site, weights[site.name])
            x = site.value.to(dtype)
            if rule == "normal_loc":
                scale = site.arguments_at(values)["scale"]
                weight = weight / scale**2
            stat = torch.stack(torch.broadcast_tensors(x, torch.ones_like(x)), -1)
            sums += weighted_row_sums(weight, stat, site.arguments[key].index, num_rows)
        sums = _statistic(cache, (name, rule), sums)
        weighted, total = sums[:, 0], sums[:, 1]
        if rule == "bernoulli":
            a = _prior_rows(prior, "concentration1", tuple(current.shape), 0, dtype)
            b = _prior_rows(prior, "concentration0", tuple(current.shape), 0, dtype)
            numerator, denominator = (weighted, total) if a is None else (weighted + a - 1, total + a + b - 2)
            new = (numerator / denominator.clamp(min=EPS)).clamp(EPS, 1 - EPS)
        elif rule == "poisson":
            a = _prior_rows(prior, "concentration", tuple(current.shape), 0, dtype)
            b = _prior_rows(prior, "rate", tuple(current.shape), 0, dtype)
            numerator, denominator = (weighted, total) if a is None else ((weighted + a - 1).clamp(min=0), total + b)
            new = (numerator / denominator.clamp(min=EPS)).clamp(min=EPS)
        else:
            m = _prior_rows(prior, "loc", tuple(current.shape), 0, dtype)
            s = _prior_rows(prior, "scale", tuple(current.shape), 0, dtype)
            numerator, denominator = (weighted, total) if m is None else (weighted + m / s**2, total + 1 / s**2)
            new = numerator / denominator.clamp(min=EPS)
        return _keep_old(new, old_rows, denominator > 0).reshape(current.shape)

    if rule == "normal_scale":
        sums = torch.zeros((num_rows, 2), dtype=dtype)
        for site, key in uses:
            loc = site.arguments_at(values)["loc"]
            residual = (site.value.to(dtype) - loc) ** 2
            stat = torch.stack([residual, torch.ones_like(residual)], -1)
            sums += weighted_row_sums(cell_weights(site, weights[site.name]), stat, site.arguments[key].index, num_rows)
        sums = _statistic(cache, (name, rule), sums)
        raw = sums[:, 0] / (sums[:, 1] + EPS)
        used = sums[:, 1] > 0
        _record_collapse(cache, name, uses, current, event_shape, sums[:, 1], raw, reg_covar)
        variance = raw + reg_covar
        if not bool((variance[used] > 0).all()):
            _raise_singular(name, uses, current, event_shape, ~(variance > 0) & used, "a variance of 0")
        return _keep_old(variance.sqrt(), old_rows, used).reshape(current.shape)

    # multivariate normal: weighted sums of the design [x̃, x̃ x̃ᵀ (upper), 1], shared by loc and cov
    total = None
    for site, key in uses:
        if (site.name, num_rows) not in cache:
            prepare_mvn_features(site)
            design = site.cache["design"].reshape(site.cache["data_shape"] + (-1,))
            weight = cell_weights(site, weights[site.name])
            sums = weighted_row_sums(weight, design, site.arguments[key].index, num_rows)
            cache[(site.name, num_rows)] = _statistic(cache, ("design", site.name, num_rows), sums)
        sums = cache[(site.name, num_rows)]
        total = sums if total is None else total + sums
    site = uses[0][0]
    d, centre = site.cache["dim"], site.cache["centre"]
    count = total[:, -1] + EPS
    first_moment = total[:, :d]
    used = total[:, -1] > 0
    if rule == "mvn_loc":
        new = first_moment / count.unsqueeze(-1) + centre
        return _keep_old(new, old_rows, used).reshape(current.shape)
    key = uses[0][1]
    loc_argument = site.arguments["loc"]
    if isinstance(loc_argument, Gather):
        mean = rows(values[loc_argument.name], (d,))[: num_rows] - centre
        if mean.shape[0] < num_rows:
            mean = mean.expand(num_rows, d)
    else:
        mean = loc_argument.value.reshape(-1, d)[:1].expand(num_rows, d) - centre
    first, second = upper_triangle(d)
    second_moment = torch.zeros((num_rows, d, d), dtype=dtype)
    second_moment[:, first, second] = total[:, d:-1]
    second_moment[:, second, first] = total[:, d:-1]
    cross = first_moment.unsqueeze(-1) * mean.unsqueeze(-2)
    covariance = (second_moment - cross - cross.transpose(-1, -2)) / count[:, None, None] + (
        total[:, -1] / count
    )[:, None, None] * mean.unsqueeze(-1) * mean.unsqueeze(-2)
    smallest = torch.linalg.eigvalsh(covariance)[:, 0]
    _record_collapse(cache, name, uses, current, event_shape, total[:, -1], smallest, reg_covar)
    covariance = covariance + reg_covar * torch.eye(d, dtype=dtype)
    # rows without data keep their old value; their (undefined) covariance must not stop the step
    covariance = torch.where(used[:, None, None], covariance, torch.eye(d, dtype=dtype))
    tril, info = torch.linalg.cholesky_ex(covariance)
    if bool((info > 0).any()):
        _raise_singular(name, uses, current, event_shape, info > 0, "a covariance that is not positive definite")
    if key == "scale_tril":
        new = tril
    elif key == "covariance_matrix":
        new = covariance
    else:
        new = torch.cholesky_inverse(tril)
    return _keep_old(new, old_rows, used).reshape(current.shape)


def _components(current: torch.Tensor, event_shape: tuple[int, ...], mask: torch.Tensor) -> list[tuple[int, ...]]:
    """The indices into ``current`` (without its event dimensions) of the rows in ``mask``."""
    batch_shape = tuple(current.shape[: current.dim() - len(event_shape)])
    return [tuple(int(i) for i in torch.unravel_index(torch.tensor(row), batch_shape)) for row in torch.nonzero(mask).flatten().tolist()]


def _record_collapse(
    cache: dict, name: str, uses: list[tuple[SiteModel, str]], current: torch.Tensor, event_shape: tuple[int, ...],
    mass: torch.Tensor, smallest_variance: torch.Tensor, reg_covar: float,
) -> None:
    """Notes in ``cache["collapsed"][name]`` the rows holding less than one datum or whose
    smallest variance, before regularisation, is at most ``reg_covar``: (observed sites,
    component indices, their responsibility masses)."""
    collapsed = (mass < 1.0) | (smallest_variance <= reg_covar)
    if bool(collapsed.any()):
        sites = sorted({site.name for site, _ in uses})
        cache.setdefault("collapsed", {})[name] = (sites, _components(current, event_shape, collapsed), mass[collapsed].tolist())


def _raise_singular(name: str, uses: list[tuple[SiteModel, str]], current: torch.Tensor, event_shape: tuple[int, ...], mask: torch.Tensor, what: str) -> None:
    sites = ", ".join(repr(n) for n in sorted({site.name for site, _ in uses}))
    components = _components(current, event_shape, mask)
    raise NonFiniteStep(
        f"the M-step gave {what} for component(s) {', '.join(str(list(c)) for c in components)} of {name!r}",
        f"the component(s) of site {sites} collapsed onto single points; set reg_covar > 0 (scikit-learn's default is 1e-6, "
        "in the data's squared units) or use fewer components",
    )

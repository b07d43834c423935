"""Did an engine's answer agree with the model's reference? Label alignment and verdicts.

The tour's capability table states, for each engine run, whether its answer for the
model's small global latents and learned ``param`` values agreed with a *reference*: the
best-founded answer among the runs without warnings (:func:`reference_tier`): a closed form
or exact enumeration first, then MCMC or importance sampling (exact up to Monte Carlo
error), then a converged deterministic fit (EM, CAVI, L-BFGS), then a stochastic fit that
converged by its own test. A run that was flagged, or whose convergence is unknown (SVI or
ADVI for a fixed budget of noisy steps), is never the reference. A quantity θ agrees when

    |E_run[θ] − E_ref[θ]| ≤ 4 √(mcse_run² + mcse_ref²) + a (sd_ref),

with mcse = sd / √ESS (ESS from R-hat/ESS diagnostics for MCMC, the importance ESS, the
number of draws for independent draws, 0 for a point estimate) and an allowance a = 0 for
engines that are exact up to Monte Carlo error (MCMC, importance sampling, enumeration) and
a = ½ for approximations by design (variational engines), a = 1 for a point estimate (MAP,
MLE: a mode, which differs from the mean of a skewed posterior), so that a mean-field
posterior whose mean is half a posterior sd off still agrees, but one that never left the
prior does not. Two point fits of learned ``param`` values (EM against maximum likelihood
or SVI) have no Monte Carlo error, and their coordinates may be unidentified (a rotation of
PPCA's loadings): where the log-likelihood at each fit can be computed exactly, they agree
when the run lies in the reference's 95 % likelihood-ratio confidence region,
ℓ(θ_ref) − ℓ(θ_run) ≤ ½ χ²_d(0.95) (:func:`compare_fits`); elsewhere value by value within a
relative ``POINT_RTOL`` = 5 % of the reference's magnitude (the site's mean absolute value
added, so that values near 0 are not held to 0). Where the simulated true values are known,
a point fit whose log-likelihood is more than ½ χ²_d(0.95) below theirs is not the maximum
(which is at least as high): it is flagged, and never the reference.

Mixtures are compared after aligning component labels (label switching): the components of
every run are permuted to best match a target (the simulated truth where it is known, else
the reference) by the Hungarian algorithm on squared differences of the component
parameters' means (``scipy.optimize.linear_sum_assignment``). Which sites carry component
labels is read from the structure: for a finite discrete latent z of cardinality K, the
global sites with a plate of size K, and z's parents with a last event dimension of size K
(the mixture weights); z's own draws and marginals are relabelled too.

The finite discrete latents are compared through their marginals p(z_n = k | x) after the
alignment (:func:`compare_marginals`): the engine's exact marginals (enumeration, EM, CAVI)
or the frequencies of its draws (MCMC, importance sampling), with the same 4-MCSE tolerance
and allowances, the indicator's sd √(p(1 − p)) standing for the posterior sd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Optional

import numpy as np

from ppgen.results import Result
from ppgen.structure import ModelStructure

#: Differences up to this many combined Monte Carlo standard errors count as agreement.
MCSE_MULTIPLE = 4.0
#: Allowance, in reference posterior sd, for engines that approximate by design (VI, MAP).
APPROXIMATION_SD = 0.5
#: Relative tolerance between two point estimates (no Monte Carlo error to scale by).
POINT_RTOL = 0.05
#: Allowance, in reference posterior sd, for a point estimate (a mode) against a posterior.
POINT_SD = 1.0
#: Two fits agree when the reference's log-likelihood exceeds the run's by at most half this
#: quantile of χ²_d (the run lies in the reference's likelihood-ratio confidence region).
LIKELIHOOD_RATIO_LEVEL = 0.95

#: What a reference of each :func:`reference_tier` is, for the capability cells.
TIER_NAMES = {
    4: "exact",
    3: "exact up to Monte Carlo error",
    2: "a converged deterministic fit",
    1: "a converged stochastic fit: approximate",
}

#: Key of the simulated true values' log-likelihood in ``verdicts(..., log_likelihoods=...)``.
TRUTH = "simulated truth"

Status = Literal["reference", "agrees", "disagrees", "not compared"]


@dataclass(frozen=True)
class Verdict:
    """One run against the reference: ``status``, the reference engine, the largest
    standardised difference ``worst`` (difference / tolerance; ≤ 1 agrees) and a sentence."""

    status: Status
    reference: Optional[str] = None
    worst: Optional[float] = None
    detail: str = ""


# ------------------------------------------------------------------------------------------
# label alignment


def component_axes(structure: ModelStructure) -> dict[str, dict[str, list[int]]]:
    """For each finite discrete latent z: site -> axes (of one value of the site, without the
    draw axis) that index z's K components. z itself maps to ``[]`` (its values are labels)."""
    out: dict[str, dict[str, list[int]]] = {}
    for z in structure.latent.values():
        if not z.is_enumerable or not z.support.cardinality or z.support.cardinality < 2:
            continue
        size = z.support.cardinality
        axes: dict[str, list[int]] = {}
        for site in structure.sites.values():
            if site.is_discrete or site.kind not in ("latent", "param") or set(site.plates) & set(z.plates):
                continue
            found = []
            batch = len(site.batch_shape)
            for plate_name in site.plates:
                plate = structure.plates.get(plate_name)
                if plate is not None and plate.size == size and plate.dim is not None and -batch <= plate.dim < 0:
                    found.append(batch + plate.dim)
            if site.name in z.parents and site.event_shape and site.event_shape[-1] == size:
                found.append(batch + len(site.event_shape) - 1)
            shape = site.batch_shape + site.event_shape
            if not found and site.name in z.parents and shape and shape[-1] == size:
                found.append(len(shape) - 1)  # weights as a param site or an unplated vector
                if len(shape) >= 2 and shape[0] == size:
                    found.append(0)  # a transition matrix: rows indexed by the previous state
            if not found and shape and shape[0] == size and set(structure.children(site.name)) & set(structure.children(z.name)):
                found.append(0)  # per-component values indexed by z in a shared child (locs[z])
            if found:
                axes[site.name] = sorted(set(found))
        if axes:
            axes[z.name] = []
            out[z.name] = axes
    return out


def _value(result: Result, name: str) -> Optional[np.ndarray]:
    """Posterior mean (or point value) of ``name`` in ``result``."""
    if name in result.samples:
        return np.asarray(result.samples[name], dtype=float).mean(axis=0)
    if name in result.params:
        return np.asarray(result.params[name], dtype=float)
    return None


def means(result: Result) -> dict[str, np.ndarray]:
    """Every site's posterior mean or point value, as a target for :func:`align`."""
    names = list(result.samples) + [n for n in result.params if n not in result.samples]
    return {name: value for name in names if (value := _value(result, name)) is not None}


def _single_axis_features(values: dict[str, np.ndarray], axes: dict[str, list[int]], size: int) -> Optional[np.ndarray]:
    """(K, F) features per component: sites with one component axis moved first and
    flattened; sites with several (a K × K block matrix) contribute their diagonal."""
    columns = []
    for name, site_axes in axes.items():
        if not site_axes or name not in values:
            continue
        value = np.asarray(values[name], dtype=float)
        if any(value.ndim <= a or value.shape[a] != size for a in site_axes):
            return None
        if len(site_axes) == 1:
            feature = np.moveaxis(value, site_axes[0], 0).reshape(size, -1)
        else:
            feature = np.stack([value[tuple(k if a in site_axes else slice(None) for a in range(value.ndim))] for k in range(size)])
            feature = feature.reshape(size, -1)
        scale = feature.std() if feature.size > 1 and feature.std() > 0 else 1.0
        columns.append(feature / scale)
    return np.concatenate(columns, axis=1) if columns else None


def component_permutation(target: dict[str, np.ndarray], values: dict[str, np.ndarray], axes: dict[str, list[int]], size: int) -> Optional[np.ndarray]:
    """``order`` with ``values``' component ``order[j]`` matched to ``target``'s component j
    (Hungarian algorithm on squared feature differences), or None when they cannot be compared."""
    from scipy.optimize import linear_sum_assignment

    shared = {n: a for n, a in axes.items() if n in target and n in values}
    ours, theirs = _single_axis_features(target, shared, size), _single_axis_features(values, shared, size)
    if ours is None or theirs is None or ours.shape != theirs.shape:
        return None
    cost = ((ours[:, None, :] - theirs[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def _permute(value: np.ndarray, site_axes: list[int], order: np.ndarray, offset: int) -> np.ndarray:
    for axis in site_axes:
        value = np.take(value, order, axis=axis + offset)
    return value


def align(result: Result, structure: ModelStructure, target: dict[str, np.ndarray]) -> Result:
    """``result`` with its mixture components relabelled to match ``target`` (site -> mean or
    true value); unchanged where the structure has no component labels or nothing to match.
    Discrete latents that share their component sites (the states z_0, z_1, ... of a hidden
    Markov chain) are relabelled by one permutation."""
    samples, params, marginals = dict(result.samples), dict(result.params), dict(result.marginals)
    groups: dict[frozenset, list[str]] = {}
    all_axes = component_axes(structure)
    for z, axes in all_axes.items():
        groups.setdefault(frozenset((n, tuple(a)) for n, a in axes.items() if a), []).append(z)
    for signature, labels in groups.items():
        axes = dict(signature)
        size = structure.sites[labels[0]].support.cardinality
        current = means(replace(result, samples=samples, params=params))
        order = component_permutation(target, current, {n: list(a) for n, a in axes.items()}, size)
        if order is None or np.array_equal(order, np.arange(size)):
            continue
        relabel = np.argsort(order)  # old label order[j] becomes j
        for name in labels:
            if name in samples:
                samples[name] = relabel[np.asarray(samples[name]).astype(int)]
            if name in marginals:
                marginals[name] = np.take(np.asarray(marginals[name]), order, axis=-1)
        for name, site_axes in axes.items():
            if name in samples:
                samples[name] = _permute(np.asarray(samples[name]), list(site_axes), order, 1)
            if name in params:
                params[name] = _permute(np.asarray(params[name]), list(site_axes), order, 0)
    return replace(result, samples=samples, params=params, marginals=marginals)


# ------------------------------------------------------------------------------------------
# verdicts


def is_mcmc(result: Result) -> bool:
    return "r_hat" in result.diagnostics


def is_exact_up_to_monte_carlo(result: Result) -> bool:
    """MCMC, importance sampling and exact engines: no approximation beyond Monte Carlo error."""
    if is_mcmc(result) or "ess" in result.diagnostics:
        return True
    return result.log_evidence is not None and result.log_evidence.kind == "exact"


def _summary(result: Result, name: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per element of ``name``: mean, sd, Monte Carlo standard error (flat arrays)."""
    if name in result.samples and np.asarray(result.samples[name]).shape[0] > 1:
        draws = np.asarray(result.samples[name], dtype=float)
        flat = draws.reshape(draws.shape[0], -1)
        mean, sd = flat.mean(0), flat.std(0)
        ess = np.full(mean.shape, float(flat.shape[0]))
        if is_mcmc(result) and name in result.diagnostics.get("ess_bulk", {}):
            ess = np.asarray(result.diagnostics["ess_bulk"][name], dtype=float).reshape(-1)
        elif "ess" in result.diagnostics:
            ess = np.full(mean.shape, float(result.diagnostics["ess"]))
        ess = np.where(np.isfinite(ess) & (ess > 1.0), ess, 1.0)
        return mean, sd, sd / np.sqrt(ess)
    value = _value(result, name)
    if value is None:
        return None
    flat = value.reshape(-1)
    return flat, np.zeros_like(flat), np.zeros_like(flat)


def compare(run: Result, reference: Result, names: list[str], reference_name: str = "") -> Verdict:
    """:class:`Verdict` of ``run`` against ``reference`` over the sites ``names`` (both
    already aligned); see the module docstring for the tolerance."""
    reference_name = reference_name or reference.engine
    allowance = 0.0 if is_exact_up_to_monte_carlo(run) and is_exact_up_to_monte_carlo(reference) else APPROXIMATION_SD
    worst, where, compared, rules = -math.inf, "", 0, set()
    for name in names:
        ours, theirs = _summary(run, name), _summary(reference, name)
        if ours is None or theirs is None or ours[0].shape != theirs[0].shape:
            continue
        if not (ours[1].any() or theirs[1].any()):  # two point estimates: no Monte Carlo error to scale by
            tolerance = POINT_RTOL * (np.abs(theirs[0]) + np.abs(theirs[0]).mean())
            rules.add(f"within {POINT_RTOL:.0%} of the reference's scale (point estimates)")
        else:
            point = not ours[1].any()
            tolerance = MCSE_MULTIPLE * np.sqrt(ours[2] ** 2 + theirs[2] ** 2) + (POINT_SD if point else allowance) * theirs[1]
            extra = POINT_SD if point else allowance
            rules.add("within Monte Carlo error" + (f" + {extra:g} sd" if extra else ""))
        tolerance = np.maximum(tolerance, 1e-9 * (1.0 + np.abs(theirs[0])))
        ratio = np.abs(ours[0] - theirs[0]) / tolerance
        compared += ratio.size
        index = int(np.argmax(ratio))
        if ratio[index] > worst:
            worst = float(ratio[index])
            label = name if ratio.size == 1 else f"{name}[{index}]"
            where = f"{label}: {ours[0][index]:.3g} vs {theirs[0][index]:.3g} (tolerance {tolerance[index]:.2g})"
    if not compared:
        return Verdict("not compared", reference_name, None, f"no quantity shared with {reference_name}")
    kind = "; ".join(sorted(rules))
    if worst <= 1.0:
        return Verdict("agrees", reference_name, worst, f"agrees with {reference_name} {kind} on {compared} quantities")
    return Verdict("disagrees", reference_name, worst, f"disagrees with {reference_name} ({kind}): worst {where}")


def _marginal_summary(result: Result, name: str, size: int) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (element, category) of the discrete latent ``name`` with ``size`` categories:
    probability p, indicator sd √(p(1 − p)), Monte Carlo standard error (flat arrays). From
    ``result.marginals`` (exact given the run's parameters: no Monte Carlo error) or from the
    frequencies of the draws, with sd √(p̃(1 − p̃)) and mcse sd / √ESS, p̃ = (ESS·p + ½) / (ESS + 1)
    so that a category drawn always or never still has an error of order 1/ESS (ESS: the site's
    bulk ESS for MCMC, the importance ESS, else the number of draws)."""
    if name in result.marginals:
        probs = np.asarray(result.marginals[name], dtype=float)
        if probs.ndim == 0 or probs.shape[-1] != size:
            return None
        flat = probs.reshape(-1)
        return flat, np.sqrt(np.clip(flat * (1 - flat), 0.0, None)), np.zeros_like(flat)
    if name not in result.samples or np.asarray(result.samples[name]).shape[0] < 2:
        return None
    draws = np.asarray(result.samples[name])
    labels = np.rint(draws.reshape(draws.shape[0], -1)).astype(int)
    if labels.min() < 0 or labels.max() >= size:
        return None
    probs = np.stack([(labels == k).mean(0) for k in range(size)], axis=-1)  # (elements, K)
    ess = np.full(labels.shape[1], float(labels.shape[0]))
    if is_mcmc(result) and name in result.diagnostics.get("ess_bulk", {}):
        ess = np.broadcast_to(np.asarray(result.diagnostics["ess_bulk"][name], dtype=float).reshape(-1), ess.shape)
    elif "ess" in result.diagnostics:
        ess = np.full(ess.shape, float(result.diagnostics["ess"]))
    ess = np.where(np.isfinite(ess) & (ess > 1.0), ess, 1.0)[:, None]
    smoothed = (ess * probs + 0.5) / (ess + 1.0)
    spread = np.sqrt(smoothed * (1 - smoothed))
    return probs.reshape(-1), spread.reshape(-1), (spread / np.sqrt(ess)).reshape(-1)


def _family_multiple(count: int) -> float:
    """The MCSE multiple that keeps the chance of a false alarm over ``count`` probabilities at
    that of one quantity at :data:`MCSE_MULTIPLE` (Bonferroni): a site of N data × K categories
    is one verdict, not N·K chances to flag a correct run."""
    from scipy.stats import norm

    level = 2 * norm.sf(MCSE_MULTIPLE)
    return float(max(MCSE_MULTIPLE, norm.isf(level / (2 * max(count, 1)))))


def _is_fit(result: Result) -> bool:
    """A point fit: its discrete marginals are conditional on point estimates of the globals."""
    return not result.samples and bool(result.params)


def compare_marginals(run: Result, reference: Result, discrete: dict[str, int], reference_name: str = "") -> Verdict:
    """:class:`Verdict` of ``run``'s discrete latent marginals p(z_n = k | x) against the
    ``reference``'s (both aligned), for the sites ``discrete`` (site -> number of categories):

        |p_run − p_ref| ≤ c √(mcse_run² + mcse_ref²) + a √(p_ref (1 − p_ref)),

    element by element, with the allowance a of :func:`compare` (0 between engines exact up to
    Monte Carlo error, ½ for a variational run, 1 for marginals given a point fit) and c = 4
    raised for the number m of probabilities compared so that the chance of a false alarm over
    all of them is that of one quantity at 4 (c = Φ⁻¹(1 − 6.3·10⁻⁵ / 2m), 5.4 for m = 900). Confident
    assignments (p_ref near 0 or 1) are held tightly; an engine that put a datum in another
    component disagrees even where its continuous summaries agree."""
    reference_name = reference_name or reference.engine
    if is_exact_up_to_monte_carlo(run) and is_exact_up_to_monte_carlo(reference):
        allowance = 0.0
    elif _is_fit(run) or _is_fit(reference):
        allowance = POINT_SD
    else:
        allowance = APPROXIMATION_SD
    summaries = {name: (_marginal_summary(run, name, size), _marginal_summary(reference, name, size)) for name, size in discrete.items()}
    summaries = {n: pair for n, pair in summaries.items() if None not in pair and pair[0][0].shape == pair[1][0].shape}
    multiple = _family_multiple(sum(pair[0][0].size for pair in summaries.values()))
    worst, where, compared = -math.inf, "", 0
    for name, (ours, theirs) in summaries.items():
        size = discrete[name]
        tolerance = multiple * np.sqrt(ours[2] ** 2 + theirs[2] ** 2) + allowance * theirs[1]
        tolerance = np.maximum(tolerance, 1e-6)
        ratio = np.abs(ours[0] - theirs[0]) / tolerance
        compared += ratio.size
        index = int(np.argmax(ratio))
        if ratio[index] > worst:
            worst = float(ratio[index])
            element, category = divmod(index, size)
            where = (
                f"p({name}[{element}] = {category}): {ours[0][index]:.3g} vs {theirs[0][index]:.3g} "
                f"(tolerance {tolerance[index]:.2g})"
            )
    if not compared:
        return Verdict("not compared", reference_name, None, f"no discrete marginal shared with {reference_name}")
    if worst <= 1.0:
        return Verdict("agrees", reference_name, worst, f"discrete marginals agree with {reference_name} on {compared} probabilities")
    return Verdict("disagrees", reference_name, worst, f"discrete marginals disagree with {reference_name}: worst {where}")


def _with_marginals(verdict: Verdict, marginals: Verdict) -> Verdict:
    """The continuous verdict joined with the discrete marginals' one: a run agrees only when
    both do; a run with no continuous quantity in common is judged by its marginals."""
    if marginals.status == "not compared" or verdict.status == "disagrees":
        return verdict
    if marginals.status == "disagrees" or verdict.status == "not compared":
        return marginals
    worst = max(w for w in (verdict.worst, marginals.worst) if w is not None)
    return replace(verdict, worst=worst, detail=f"{verdict.detail}; {marginals.detail}")


def discrete_latents(structure: ModelStructure) -> dict[str, int]:
    """Finite discrete latents (site -> number of categories) whose marginals are compared."""
    return {
        name: site.support.cardinality
        for name, site in structure.latent.items()
        if site.is_enumerable and site.support.cardinality and site.support.cardinality >= 2
    }


def compare_fits(run_log_likelihood: float, reference_log_likelihood: float, num_parameters: int, reference_name: str) -> Verdict:
    """:class:`Verdict` of one point fit against another by the log-likelihood each reaches on
    the training data, the tolerance that suits point estimates (they have no Monte Carlo
    error, and their coordinates may be unidentified: a rotation of PPCA's loadings, a
    relabelling): the run agrees when

        ℓ(θ_ref) − ℓ(θ_run) ≤ ½ χ²_d(0.95),

    i.e. θ_run lies in the reference's 95 % likelihood-ratio confidence region (Wilks), d the
    number of parameter values compared. A run that fits better than the reference agrees
    (and says so: the reference is then a local optimum)."""
    from scipy.stats import chi2

    allowed = 0.5 * float(chi2.ppf(LIKELIHOOD_RATIO_LEVEL, max(num_parameters, 1)))
    gap = reference_log_likelihood - run_log_likelihood
    rule = f"log-likelihood within ½ χ²_{num_parameters}({LIKELIHOOD_RATIO_LEVEL:g}) = {allowed:.3g} nats"
    where = f"log-likelihood {run_log_likelihood:.6g} vs {reference_log_likelihood:.6g}"
    if gap <= allowed:
        better = " (a better fit than the reference)" if gap < 0 else ""
        return Verdict("agrees", reference_name, max(gap, 0.0) / allowed, f"agrees with {reference_name}: {where}, {rule}{better}")
    return Verdict("disagrees", reference_name, gap / allowed, f"disagrees with {reference_name}: {where}, {gap:.3g} nats worse ({rule})")


def _point_parameter_count(run: Result, reference: Result, names: list[str]) -> Optional[int]:
    """Number of values of ``names`` that both runs hold as point estimates (``params``, or a
    single draw), or None when some compared quantity has posterior draws in either run."""
    count = 0
    for name in names:
        ours, theirs = _summary(run, name), _summary(reference, name)
        if ours is None or theirs is None or ours[0].shape != theirs[0].shape:
            continue
        if ours[1].any() or theirs[1].any():
            return None
        count += ours[0].size
    return count or None


def is_stochastic_fit(result: Result) -> bool:
    """A fit whose objective was a Monte Carlo or minibatch estimate (SVI, ADVI, minibatch
    MLE): its end point moves with the seed, so it ranks below a deterministic fit."""
    evidence = result.log_evidence
    return bool(
        (evidence is not None and evidence.kind != "exact" and evidence.stderr > 0)
        or float(result.diagnostics.get("elbo_stderr", 0.0) or 0.0) > 0
        or result.diagnostics.get("subsample_size") is not None
    )


def reference_tier(result: Result, names: list[str]) -> int:
    """How well-founded ``result`` is as the answer for ``names`` (higher is better; 0: never
    the reference): 4 exact (closed form, enumeration), 3 exact up to Monte Carlo error (MCMC,
    importance sampling) with draws, 2 a converged deterministic fit (EM, CAVI, L-BFGS), 1 a
    converged stochastic fit (SVI or ADVI stopped by ``tol``), 0 a run not known to have
    converged (a fixed budget of noisy steps) or holding none of ``names``."""
    if not any(name in result.samples or name in result.params for name in names):
        return 0
    draws = any(np.asarray(result.samples.get(n, np.zeros((1,)))).shape[0] > 1 for n in names)
    if result.log_evidence is not None and result.log_evidence.kind == "exact" and any(n in result.samples for n in names):
        return 4
    if draws and is_exact_up_to_monte_carlo(result):
        return 3
    if result.converged is True:
        return 1 if is_stochastic_fit(result) else 2
    return 0


def choose_reference(results: dict[str, Result], trusted: set[str], names: list[str]) -> Optional[str]:
    """The reference among ``results`` (engine -> result): the engine in ``trusted`` (no
    warnings, not flagged as unconverged) of highest :func:`reference_tier`, MCMC runs ranked
    by bulk ESS; ``None`` when no trusted run reaches tier 1 (a fixed-budget SVI run is never
    the reference: the cells then say "not compared" instead of judging against it)."""

    def rank(item: tuple[str, Result]) -> tuple:
        engine, result = item
        ess = float(result.diagnostics.get("min_ess_bulk", 0.0) or 0.0) if is_mcmc(result) else 0.0
        return (reference_tier(result, names), is_mcmc(result), ess)

    candidates = {engine: r for engine, r in results.items() if engine in trusted and reference_tier(r, names) > 0}
    if not candidates:
        return None
    return max(candidates.items(), key=rank)[0]


def verdicts(
    results: dict[str, Result],
    trusted: set[str],
    structure: ModelStructure,
    names: list[str],
    truth: Optional[dict[str, Any]] = None,
    learners: Optional[set[str]] = None,
    log_likelihoods: Optional[dict[str, float]] = None,
) -> tuple[dict[str, Verdict], dict[str, Result]]:
    """Every run's :class:`Verdict` against the chosen reference, and the runs with their
    component labels aligned (to ``truth`` where it has the component sites, else to the
    reference). ``param`` values count only for engines in ``learners`` (default all): an
    engine that does not learn reports the values it was given. ``log_likelihoods`` (engine
    -> log p(x | θ) at the run's point estimates, where it could be computed) judges two point
    fits by :func:`compare_fits` instead of coordinate by coordinate. Otherwise the finite
    discrete latents' marginals are compared too (:func:`compare_marginals`): a run agrees
    when its continuous summaries and its assignments both do (for a program with ``param``
    sites, only the marginals of engines in ``learners``: the others condition on the
    program's initial values)."""
    log_likelihoods = dict(log_likelihoods or {})
    discrete = discrete_latents(structure)
    below_truth = _below_truth(results, names, log_likelihoods)
    trusted = set(trusted) - set(below_truth)
    reference = choose_reference(_judged(results, structure, learners), trusted, names)
    target: dict[str, np.ndarray] = {}
    if truth:
        target = {k: np.asarray(v, dtype=float) for k, v in truth.items() if _is_numeric(v)}
    if reference is not None and not _has_components(structure, target):
        target = means(results[reference])
    aligned = {engine: align(result, structure, target) for engine, result in results.items()}
    judged = _judged(aligned, structure, learners)
    out: dict[str, Verdict] = {}
    for engine, result in judged.items():
        if engine in below_truth:
            out[engine] = below_truth[engine]
        elif reference is None:
            out[engine] = Verdict("not compared", None, None, "no converged engine to compare with")
        elif engine == reference:
            tier = reference_tier(result, names)
            out[engine] = Verdict("reference", reference, None, f"the reference ({TIER_NAMES[tier]})")
        else:
            count = _point_parameter_count(result, judged[reference], names)
            if count is not None and engine in log_likelihoods and reference in log_likelihoods:
                # two point fits: their marginals follow from the parameters the likelihood judged
                out[engine] = compare_fits(log_likelihoods[engine], log_likelihoods[reference], count, reference)
            else:
                # marginals given parameters the engine did not learn (the program's initial
                # values) answer another question than the reference's: not compared
                given = bool(structure.params) and learners is not None and engine not in learners
                out[engine] = _with_marginals(
                    compare(result, judged[reference], names, reference),
                    compare_marginals(result, judged[reference], {} if given else discrete, reference),
                )
    return out, aligned


def _below_truth(results: dict[str, Result], names: list[str], log_likelihoods: dict[str, float]) -> dict[str, Verdict]:
    """Point fits whose log-likelihood falls more than ½ χ²_d(0.95) below that of the simulated
    true values (``log_likelihoods[TRUTH]``): the maximum is at least as high as the truth's, so
    such a fit lies outside the maximum's likelihood-ratio region (a local optimum, or a run
    stopped early) and can be neither the reference nor in agreement with it."""
    from scipy.stats import chi2

    truth = log_likelihoods.get(TRUTH)
    out: dict[str, Verdict] = {}
    if truth is None:
        return out
    for engine, value in log_likelihoods.items():
        result = results.get(engine)
        if engine == TRUTH or result is None:
            continue
        count = sum(int(np.size(result.params[n])) for n in names if n in result.params)
        allowed = 0.5 * float(chi2.ppf(LIKELIHOOD_RATIO_LEVEL, max(count, 1)))
        if truth - value > allowed:
            out[engine] = Verdict(
                "disagrees", TRUTH, (truth - value) / allowed,
                f"log-likelihood {value:.6g} is {truth - value:.3g} nats below the {TRUTH}'s {truth:.6g} (more than "
                f"½ χ²_{count}({LIKELIHOOD_RATIO_LEVEL:g}) = {allowed:.3g}): not the maximum (a local optimum or an unfinished run)",
            )
    return out


def _judged(results: dict[str, Result], structure: ModelStructure, learners: Optional[set[str]]) -> dict[str, Result]:
    """The results as compared: ``param`` values only from engines that learn them."""
    if learners is None:
        return results
    params = set(structure.params)
    return {
        engine: result if engine in learners else replace(result, params={k: v for k, v in result.params.items() if k not in params})
        for engine, result in results.items()
    }


def _is_numeric(value: Any) -> bool:
    try:
        return np.asarray(value, dtype=float).size > 0
    except (TypeError, ValueError):
        return False


def _has_components(structure: ModelStructure, values: dict[str, np.ndarray]) -> bool:
    return any(name in values for axes in component_axes(structure).values() for name, a in axes.items() if a)

"""``ppgen.dist`` on the NumPyro backend: ``numpyro.distributions``, with a clear refusal for
the Pyro families NumPyro lacks (naming the family and what to write instead), where pyroapi
would only say "This Pyro backend does not implement distributions.X"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpyro.distributions as _numpyro_distributions

if TYPE_CHECKING:
    from ppgen.structure import ModelStructure

#: Pyro-only families with an equivalent that runs on both backends.
_EQUIVALENTS = {
    "ZeroInflatedNegativeBinomial": "ZeroInflatedDistribution(NegativeBinomial(total_count, probs=probs), gate=gate)",
    "LogisticNormal": "TransformedDistribution(Normal(loc, scale).to_event(1), transforms.StickBreakingTransform())",
    "AffineBeta": "TransformedDistribution(Beta(c1, c0), transforms.AffineTransform(loc, scale))",
    "LKJCorrCholesky": "LKJCholesky(dimension, concentration)",
    "ExtendedBinomial": "Binomial",
    "ExtendedBetaBinomial": "BetaBinomial",
}


def __getattr__(name: str) -> Any:
    try:
        return getattr(_numpyro_distributions, name)
    except AttributeError:
        pass
    import pyro.distributions as pyro_distributions

    if not name.startswith("_") and hasattr(pyro_distributions, name):
        instead = _EQUIVALENTS.get(name)
        hint = (
            f"write ppgen.dist.{instead}, which both backends have"
            if instead
            else "run it on an engine on Pyro (svi, importance, ..., or nuts with backend='pyro')"
        )
        raise NotImplementedError(f"ppgen.dist.{name}: Pyro has {name} but NumPyro does not; {hint}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(dir(_numpyro_distributions))


def missing_family(structure: "ModelStructure") -> Optional[str]:
    """Why the program cannot run on NumPyro, or None: the first sampled site whose family
    NumPyro lacks (a Pyro-only family, or a user's own TorchDistribution)."""
    for site in structure.sites.values():
        if site.kind in ("latent", "observed") and site.distribution and not hasattr(_numpyro_distributions, site.distribution):
            return f"site {site.name!r} is a {site.distribution}, which NumPyro lacks"
    return None

"""Amortised guides: an encoder network as the inference program q(z | x).

``amortize(encoder, latent="z")`` turns a torch module that maps a batch of data to the
parameters of a distribution into a guide over a data plate,

    q(z | x) = Π_i q(z_i | x_i),   q(z_i | x_i) = Normal(z_i | μ_φ(x_i), σ_φ(x_i)),

one network φ shared by every datum instead of free parameters per datum (Kingma & Welling
2014; Rezende, Mohamed & Wierstra 2014).

``amortize(encoder, flow=f)`` pushes that Gaussian through a normalizing flow f (an inverse
autoregressive flow in Kingma et al. 2016), a richer posterior per datum:

    ε_i ~ Normal(μ_φ(x_i), σ_φ(x_i)),   z_i = f(ε_i; h_φ(x_i)),
    log q(z_i | x_i) = log Normal(ε_i; μ_φ(x_i), σ_φ(x_i)) − log |det ∂f/∂ε_i|.

The flow is conditioned on the datum through the base's location and scale, and, when the
encoder returns a third output h (a context, as in Kingma et al.'s IAF) and the flow's layers are
conditional (Pyro's ``ConditionalTransformModule``), through h as well. A context-free flow is
the same transform for every datum; a shift and scale of its input still change the shape it
gives each q(z_i | x_i) where f is nonlinear. The draw and its density come in one pass each
for an IAF (the ELBO scores the guide's own draws), so the ELBO stays a Monte Carlo estimate
(no analytic KL to the prior). Engines (``svi``, ``importance``) and
:func:`ppgen.render` bind it to the model with :meth:`Amortized.bind`, which reads the latent's
plate and the data argument from the model's structure; the bound guide has the model's
signature, so its dependence on ``x`` shows in the plate diagram as a dashed edge x → z.
"""

from __future__ import annotations

import copy
import functools
import inspect as pyinspect
from typing import Any, Callable, Optional

import torch
from pyro.distributions import ConditionalTransform

from ppgen.primitives import dist, module, plate, sample

__all__ = ["Amortized", "amortize"]


class Amortized:
    """A guide q(z | x) over a plate, computed by ``encoder`` from the data; see :func:`amortize`."""

    def __init__(
        self, encoder: torch.nn.Module, latent: str = "z", data: Optional[str] = None, plate: Optional[str] = None, name: str = "phi",
        flow: Optional[torch.nn.Module] = None,
    ) -> None:
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"amortize: encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if flow is not None:
            _flow_layers(flow)  # a clear TypeError now rather than at the first step
        if not isinstance(latent, str) or not latent:
            raise ValueError(f"amortize: latent must be a site name, got {latent!r}")
        self.encoder = encoder
        self.latent = latent
        self.data = data
        self.plate = plate
        self.name = name
        self.flow = flow
        self._layout: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        flow = "" if self.flow is None else f", flow={type(self.flow).__name__}"
        return f"amortize({type(self.encoder).__name__}, latent={self.latent!r}{flow})"

    @property
    def flow_name(self) -> str:
        """Name of the flow's parameters (``name + "_flow"``, drawn as φ_flow)."""
        return f"{self.name}_flow"

    # ---- binding to a model ---------------------------------------------------------------
    def layout(self, structure: Any) -> dict[str, Any]:
        """Plate (name, size, dim, subsample size), data argument and event rank of the latent,
        read from the model's :class:`~ppgen.ModelStructure`."""
        site = structure.sites.get(self.latent)
        if site is None or site.kind != "latent":
            latents = ", ".join(structure.latent) or "none"
            raise ValueError(f"amortize: the model has no latent site {self.latent!r} (latent sites: {latents})")
        plate_name = self.plate or (site.plates[0] if site.plates else None)
        if plate_name is None or plate_name not in site.plates:
            raise ValueError(
                f"amortize: latent {self.latent!r} must sit in a data plate (its plates: {site.plates or 'none'})"
            )
        data = self.data
        if data is None:
            for observed in structure.observed.values():
                if plate_name in observed.plates and observed.data_argument:
                    data = observed.data_argument
                    break
        if data is None:
            raise ValueError(f"amortize: no observed data argument in plate {plate_name!r}; pass data='argument name'")
        info = structure.plates[plate_name]
        return {
            "plate": plate_name,
            "dim": info.dim,
            "subsample_size": info.subsample_size,
            "size": info.size,
            "data": data,
            "event_dims": len(site.event_shape),
        }

    def bind(self, model: Callable, structure: Any = None, copy_encoder: bool = False) -> "Amortized":
        """This guide with the model's signature, plate and data argument (``structure`` of the
        model, or read on the first call). ``copy_encoder`` trains a copy, leaving ``encoder``
        untouched."""
        copied = (lambda m: None if m is None else copy.deepcopy(m)) if copy_encoder else (lambda m: m)
        bound = Amortized(copied(self.encoder), self.latent, self.data, self.plate, self.name, copied(self.flow))
        bound._model = model
        if structure is not None:
            bound._layout = bound.layout(structure)
        signature = pyinspect.signature(model)

        @functools.wraps(model)
        def guide(*args: Any, **kwargs: Any) -> Any:
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            return bound._guide(dict(arguments.arguments), args, kwargs)

        guide.__signature__ = signature  # type: ignore[attr-defined]
        guide.__name__ = f"{getattr(model, '__name__', 'model')}_guide"
        guide.amortized = bound  # type: ignore[attr-defined]
        bound._program = guide
        return bound

    @property
    def program(self) -> Callable:
        """The bound guide as a plain program with the model's signature (after :meth:`bind`)."""
        program = getattr(self, "_program", None)
        if program is None:
            raise ValueError("amortize: bind the guide to its model first (guide.bind(model))")
        return program

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        program = getattr(self, "_program", None)
        if program is not None:
            return program(*args, **kwargs)
        # unbound: the data are the keyword ``data`` (default "x") or the first argument
        key = self.data or "x"
        arguments = dict(kwargs)
        if key not in arguments:
            if not args:
                raise TypeError(f"amortize: pass the data as {key}=... or bind the guide to its model")
            arguments[key] = args[0]
        return self._guide(arguments, args, kwargs)

    def _resolve_layout(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        if self._layout is None:
            model = getattr(self, "_model", None)
            if model is None:
                self._layout = {"plate": self.plate or "N", "dim": -1, "subsample_size": None, "size": None, "data": self.data or "x", "event_dims": 1}
            else:
                from pyro import poutine

                from ppgen.structure import inspect

                with poutine.block():
                    self._layout = self.layout(inspect(model, *args, **kwargs))
        return self._layout

    # ---- the program ------------------------------------------------------------------------
    def _guide(self, arguments: dict[str, Any], args: tuple, kwargs: dict) -> Any:
        layout = self._resolve_layout(args, kwargs)
        x = arguments.get(layout["data"])
        if x is None:
            raise ValueError(f"amortize: the guide needs the data argument {layout['data']!r}, got None")
        x = torch.as_tensor(x)
        size = x.shape[0]
        module(self.name, self.encoder)
        if self.flow is not None:
            module(self.flow_name, self.flow)
        subsample = layout["subsample_size"]
        with plate(layout["plate"], size, subsample_size=subsample, dim=layout["dim"]) as index:
            batch = x[index] if subsample else x
            return sample(self.latent, self.distribution(batch, layout["event_dims"]))

    def distribution(self, x: torch.Tensor, event_dims: int = 1) -> Any:
        """q(z | x) for a batch ``x``: the encoder's output (loc, scale) as a Normal with
        ``event_dims`` event dimensions, pushed through the flow if there is one (conditioned on
        the encoder's third output, the context, when it returns one), or the distribution the
        encoder returns."""
        parameter = next(self.encoder.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
        output = self.encoder(x.to(dtype))
        if isinstance(output, torch.distributions.Distribution):
            if self.flow is not None:
                raise ValueError("amortize: with flow=..., the encoder must return (loc, scale) or (loc, scale, context), not a distribution")
            return output
        expected = "(loc, scale)" if self.flow is None else "(loc, scale) or (loc, scale, context)"
        if not isinstance(output, (tuple, list)) or len(output) not in ((2,) if self.flow is None else (2, 3)):
            raise ValueError(f"amortize: the encoder must return {expected} or a distribution, got {_describe(output)}")
        target = x.dtype if x.is_floating_point() else torch.get_default_dtype()  # the model's precision
        loc, scale = (t.to(target) for t in output[:2])
        base = dist.Normal(loc, scale).to_event(event_dims)
        if self.flow is None:
            return base
        context = output[2].to(target) if len(output) == 3 else None
        return dist.TransformedDistribution(base, self._flow_transforms(context, target))

    def _flow_transforms(self, context: Optional[torch.Tensor], dtype: torch.dtype) -> list:
        """The flow's layers, the conditional ones conditioned on ``context``."""
        flow_dtype = next((p.dtype for p in self.flow.parameters()), dtype)
        if flow_dtype != dtype:
            raise TypeError(f"amortize: the flow's parameters are {flow_dtype} but the model computes in {dtype}; convert it (flow.to({dtype}))")
        layers = _flow_layers(self.flow)
        conditional = [isinstance(layer, ConditionalTransform) for layer in layers]
        if any(conditional) and context is None:
            raise ValueError("amortize: the flow has conditional layers; the encoder must return (loc, scale, context)")
        if context is not None and not any(conditional):
            raise ValueError("amortize: the encoder returns a context but no layer of the flow is conditional (pyro ConditionalTransformModule)")
        return [layer.condition(context) if is_conditional else layer for layer, is_conditional in zip(layers, conditional)]


def _flow_layers(flow: Any) -> list:
    """The transforms of ``flow`` in the order they act: a torch module that is a transform (or a
    conditional one), or that holds them in ``transforms`` (``ppgen.models.flows.Flow``) or
    ``parts`` (Pyro's ``ComposeTransformModule``)."""
    if not isinstance(flow, torch.nn.Module):
        raise TypeError(f"amortize: flow must be a torch.nn.Module holding transforms (e.g. pyro's affine_autoregressive), got {type(flow).__name__}")
    if isinstance(flow, (torch.distributions.Transform, ConditionalTransform)) and not isinstance(flow, torch.distributions.ComposeTransform):
        return [flow]
    layers = list(getattr(flow, "transforms", ()) or getattr(flow, "parts", ()))
    if not layers or not all(isinstance(layer, (torch.distributions.Transform, ConditionalTransform)) for layer in layers):
        raise TypeError(
            f"amortize: flow must be a transform module or hold a list of transforms in .transforms, got {type(flow).__name__}"
        )
    return layers


def _describe(output: Any) -> str:
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    return type(output).__name__

def amortize(
    encoder: torch.nn.Module, latent: str = "z", data: Optional[str] = None, plate: Optional[str] = None, name: str = "phi",
    flow: Optional[torch.nn.Module] = None,
) -> Amortized:
    """An amortised guide: ``encoder(x) -> (loc, scale)`` gives q(z_i | x_i) for every datum,
    a diagonal Gaussian, or that Gaussian pushed through ``flow``.

    Parameters
    ----------
    encoder : torch module mapping a batch of data (B, ...) to (loc, scale), each (B, *event),
        with ``scale > 0`` (use softplus or exp), or to a torch distribution.
    latent : the model's per-datum latent site.
    data : the model argument holding the data (default: the observed site in the latent's plate).
    plate : the data plate (default: the latent's outermost plate).
    name : name of the encoder's parameters (drawn as φ in plate diagrams).
    flow : a normalizing flow on the latent's last dimension, trained with the encoder (its
        parameters are named ``name + "_flow"``): a Pyro transform module such as
        ``pyro.distributions.transforms.affine_autoregressive(K)`` (an IAF), a
        ``ComposeTransformModule``, or ``ppgen.models.flows.make_flow("iaf", K)``. Conditional
        layers (``conditional_affine_autoregressive(K, C)``) are conditioned on a third output
        of the encoder, h_φ(x) of shape (B, C). In the model's precision (float64 data: a
        float64 flow).

    Examples
    --------
    >>> import torch, ppgen
    >>> class Encoder(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.linear = torch.nn.Linear(5, 4, dtype=torch.float64)
    ...     def forward(self, x):
    ...         loc, log_scale = self.linear(x).chunk(2, -1)
    ...         return loc, log_scale.exp()
    >>> guide = ppgen.amortize(Encoder(), latent="z")
    >>> guide
    amortize(Encoder, latent='z')
    >>> from pyro.distributions.transforms import affine_autoregressive
    >>> ppgen.amortize(Encoder(), latent="z", flow=affine_autoregressive(2).double())
    amortize(Encoder, latent='z', flow=AffineAutoregressive)

    References
    ----------
    Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. & Welling, M. (2016).
    Improved variational inference with inverse autoregressive flow. NeurIPS.
    """
    return Amortized(encoder, latent, data, plate, name, flow)

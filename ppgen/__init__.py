"""ppgen: generative models as programs; one program, every inference engine.

Write a model with :func:`sample`, :func:`plate`, :func:`param` and the ``dist`` / ``ops``
namespaces; then :func:`inspect` it, :func:`render` its plate diagram, and run any applicable
engine through the four verbs :func:`generate`, :func:`score`, :func:`infer`, :func:`learn`.
"""

from ppgen.amortize import amortize
from ppgen.backend import current_backend, to_numpy, use_backend
from ppgen.diagram import render
from ppgen.engine import Engine, EngineCheck, engines_for, register, registered_engines
from ppgen.errors import ConvergenceWarning, DataError, EngineNotApplicable, ParameterError, ReliabilityWarning
from ppgen.flow_guide import flow_guide
from ppgen.primitives import carry, chain, deterministic, dist, factor, markov, module, ops, param, plate, sample
from ppgen.results import Estimate, Result
from ppgen.structure import Argument, ModelStructure, Plate, Site, Support, inspect
from ppgen.verbs import generate, infer, learn, score

__all__ = [
    "Argument",
    "amortize",
    "carry",
    "chain",
    "ConvergenceWarning",
    "DataError",
    "Engine",
    "EngineCheck",
    "EngineNotApplicable",
    "Estimate",
    "ModelStructure",
    "ParameterError",
    "Plate",
    "ReliabilityWarning",
    "Result",
    "Site",
    "Support",
    "current_backend",
    "deterministic",
    "dist",
    "engines_for",
    "factor",
    "flow_guide",
    "generate",
    "infer",
    "inspect",
    "learn",
    "markov",
    "module",
    "ops",
    "param",
    "plate",
    "register",
    "registered_engines",
    "render",
    "sample",
    "score",
    "to_numpy",
    "use_backend",
]

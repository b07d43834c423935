"""XLA devices for parallel chains (``chain_method="parallel"``): one chain per device.

On CPU, XLA shows one device unless ``--xla_force_host_platform_device_count=N`` is in
``XLA_FLAGS`` when JAX starts its backend (the first computation, not ``import jax``). An engine
asked for parallel chains calls :func:`request_host_devices` in its constructor, before anything
has run; :func:`parallel_devices` at run time says how many devices the chains can use, and
warns when JAX had already started with one device (the chains then run one after another).
"""

from __future__ import annotations

import os
import re
import warnings

FLAG = "--xla_force_host_platform_device_count"


def backend_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def request_host_devices(count: int) -> None:
    """Ask XLA for at least ``count`` host (CPU) devices, if JAX has not started yet (a count
    already requested in ``XLA_FLAGS``, by ppgen or the user, is kept if larger)."""
    if backend_started():
        return
    flags = os.environ.get("XLA_FLAGS", "")
    found = re.search(rf"{FLAG}=(\d+)", flags)
    if found is not None and int(found.group(1)) >= count:
        return
    flags = re.sub(rf"\s*{FLAG}=\d+", "", flags).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()


def parallel_devices(num_chains: int, owner: str) -> int:
    """Devices the chains run on in parallel (one chain per device, in rounds when there are
    more chains than devices); 1, with a warning, when JAX started with a single device."""
    import jax

    devices = jax.local_device_count()
    if devices < 2 and num_chains > 1:
        warnings.warn(
            f"{owner}: chain_method='parallel' found one XLA device (JAX started before ppgen could ask for "
            f"{num_chains}), so the {num_chains} chains run one after another; create the engine with "
            "chain_method='parallel' before running anything with JAX, or set "
            f"XLA_FLAGS={FLAG}={num_chains} before starting Python",
            UserWarning,
            stacklevel=3,
        )
    return max(1, min(devices, num_chains))

"""Several devices and several hosts, with JAX's own machinery (no parallel layer of ours).

- :func:`initialize` joins the processes of a multi-host run (``jax.distributed``; on
  SLURM and other clusters JAX finds the coordinator itself). Call it before any other
  JAX work; the CLI does it for ``biojax --coordinator ... COMMAND`` and for the
  ``BIOJAX_COORDINATOR`` / ``BIOJAX_NUM_PROCESSES`` / ``BIOJAX_PROCESS_ID`` variables.
- :func:`mesh` builds a one-axis ``jax.sharding.Mesh`` over ``devices`` = 1, N or "all"
  of ``jax.devices()`` — all processes' devices once :func:`initialize` has run.
- :func:`sharded` runs a per-shard function under ``jax.shard_map`` with every argument's
  leading axis split over the mesh (``NamedSharding(mesh, P(axis))``): MD replicas, or
  the per-device sub-batches of data-parallel training.
- :func:`is_writer`: only process 0 writes files; the others compute the same numbers.

In a run of several processes every jitted call's results are gathered back to each
process (``multihost_utils.process_allgather``) as process-local arrays, so host code
(output, checks, checkpoints) reads them as on one device; arguments are placed on the
global mesh again at the next call. See README "Multiple devices and hosts".
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from biojax.core.errors import ConfigError

#: environment variables read by :func:`initialize` when no argument is given
ENV = {"coordinator_address": "BIOJAX_COORDINATOR",
       "num_processes": "BIOJAX_NUM_PROCESSES", "process_id": "BIOJAX_PROCESS_ID"}

_initialized = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               timeout_s: int = 300) -> bool:
    """Join a multi-process run through ``jax.distributed.initialize``.

    ``coordinator_address`` ("host:port" of process 0), ``num_processes`` and
    ``process_id`` default to ``BIOJAX_COORDINATOR``, ``BIOJAX_NUM_PROCESSES`` and
    ``BIOJAX_PROCESS_ID``. With none of them set, nothing happens unless ``auto``, which
    lets JAX detect the cluster itself (SLURM, Open MPI, Kubernetes...). On CPU the
    collectives go through gloo. Must come before any other JAX computation. Returns
    whether this process is now part of a distributed run (twice: no-op)."""
    global _initialized
    if _initialized:
        return True
    args = {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id}
    for key, var in ENV.items():
        if args[key] is None and os.environ.get(var):
            value = os.environ[var]
            try:
                args[key] = value if key == "coordinator_address" else int(value)
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {value!r}") from None
    given = {k: v for k, v in args.items() if v is not None}
    if not given and not auto:
        return False
    if given and "coordinator_address" not in given:
        raise ConfigError("a multi-process run needs the coordinator's address (host:port "
                          f"of process 0): --coordinator or {ENV['coordinator_address']}")
    n, pid = given.get("num_processes"), given.get("process_id")
    if n is not None and n < 1:
        raise ConfigError(f"num_processes must be >= 1, got {n}")
    if pid is not None and n is not None and not 0 <= pid < n:
        raise ConfigError(f"process_id must be in 0..{n - 1} for {n} processes, got {pid}")
    # CPU collectives across processes (a no-op for GPU/TPU backends)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**given, initialization_timeout=timeout_s)
    _initialized = True
    return True


def process_count() -> int:
    """Number of processes in this run (1 without :func:`initialize`)."""
    return jax.process_count()


def is_writer() -> bool:
    """Whether this process writes files (only process 0 does)."""
    return jax.process_index() == 0


def resolve_devices(devices: int | str, where: str = "devices") -> list:
    """The devices ``devices`` asks for: "all" (every device of every process) or the
    first N of ``jax.devices()``. ConfigError for N < 1 or more than there are, and for
    fewer than all devices in a multi-process run (every process must take part)."""
    available = jax.devices()
    if devices == "all":
        return list(available)
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ConfigError(f"{where} must be \"all\" or a number >= 1, got {devices!r}")
    if devices > len(available):
        raise ConfigError(
            f"{where} = {devices} but only {len(available)} {available[0].platform} "
            f"device(s) are available (jax.devices()); on a CPU, XLA_FLAGS="
            "--xla_force_host_platform_device_count=N gives N host devices")
    if jax.process_count() > 1 and devices != len(available):
        raise ConfigError(
            f"{where} = {devices} in a run of {jax.process_count()} processes with "
            f"{len(available)} devices in all: use devices = \"all\" (or "
            f"{len(available)}) so that every process takes part")
    return list(available[:devices])


def mesh(devices: int | str | Sequence, axis: str, where: str = "devices") -> Mesh | None:
    """A one-axis Mesh named ``axis`` over ``devices`` (see :func:`resolve_devices`), or
    None for a single device in a single process (the plain, unsharded path)."""
    devs = devices if isinstance(devices, (list, tuple)) else resolve_devices(devices, where)
    if len(devs) == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(devs), (axis,))


def check_divisible(n: int, m: Mesh | None, what: str, where: str) -> int:
    """``n // devices``; ConfigError naming ``where`` unless the mesh size divides ``n``."""
    size = 1 if m is None else m.size
    if n % size:
        raise ConfigError(f"{where}: {what} = {n} cannot be split evenly over {size} "
                          f"devices; use a multiple of {size}")
    return n // size


def place(tree, sharding: NamedSharding):
    """Every leaf of ``tree`` as a global ``jax.Array`` with ``sharding``. Leaves already
    placed so are kept; in a multi-process run the others must be process-local values
    that are the same in every process (they are here: one seed, one input)."""
    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree)


def to_local(tree):
    """Every leaf as a process-local array holding the whole value (in one process:
    unchanged). A collective: every process must call it."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if x.is_fully_replicated:
            return jnp.asarray(np.asarray(x))
        return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(get, tree)


def sharded(local_fn: Callable, m: Mesh, axis: str, out_split: bool = True,
            in_split: Sequence[bool] | None = None, collectives: bool = True) -> Callable:
    """jit(shard_map(local_fn)): each device runs ``local_fn`` on its slice of every
    argument's leading axis (arguments whose ``in_split`` entry is False are replicated
    whole); the results are concatenated along the leading axis (``out_split``) or, when
    False, are the same on every device (reduced inside ``local_fn`` with ``lax.psum``).
    ``collectives=False`` for a ``local_fn`` whose shards never talk to each other
    (independent replicas): shard_map's varying-across-devices type check is then off, so
    loop carries need no ``pcast``; with collectives it stays on, which is what makes
    ``grad`` of a ``psum`` come out as the summed gradient.
    Arguments are placed on the mesh first; in a multi-process run the results come back
    as process-local arrays (:func:`to_local`)."""
    split, whole = NamedSharding(m, P(axis)), NamedSharding(m, P())

    def call(*args):
        flags = in_split if in_split is not None else [True] * len(args)
        in_specs = tuple(P(axis) if f else P() for f in flags)
        fn = jax.shard_map(local_fn, mesh=m, in_specs=in_specs,
                           out_specs=P(axis) if out_split else P(),
                           check_vma=collectives)
        key = tuple(flags)
        if key not in cache:
            cache[key] = jax.jit(fn)
        placed = [place(a, split if f else whole) for a, f in zip(args, flags)]
        return to_local(cache[key](*placed))

    cache: dict = {}
    return call


def scaling(run_replicas: Callable[[int], float], device_counts: Sequence[int] = (1, 2, 4)
            ) -> list[dict]:
    """Scaling efficiency of replica throughput over device counts.

    ``run_replicas(n)`` runs a fixed workload on ``n`` devices and returns its aggregate
    throughput (e.g. replica-steps/s, measured after warm-up). Returns one row per count:
    ``{"devices", "throughput", "speedup" = T(n)/T(1), "efficiency" = T(n)/(n·T(1))}``.
    The first count is the baseline (it should be 1)."""
    rows, base = [], None
    for n in device_counts:
        t = float(run_replicas(n))
        base = t if base is None else base
        n0 = device_counts[0]
        rows.append({"devices": n, "throughput": t, "speedup": t / base,
                     "efficiency": t / base * n0 / n})
    return rows

"""Placing a training run on devices: one global mesh, batches split over every device, parameters
and optimiser state either replicated or sharded FSDP-style.

The mesh has the axes of the config's ``mesh`` field, in the order ``("data", "fsdp")``, laid out
over ``jax.devices()`` (every device of every process) in order, so each process's devices are a
contiguous block of the flattened mesh and its slice of a batch is a contiguous block of rows.

- A batch ``(B, ...)`` is split along its first axis over all mesh axes together: each of the
  ``D`` devices holds ``B / D`` examples.
- An array of the parameters or of the optimiser state of shape ``(s_0, ..., s_k)`` is split along
  ``argmax_i { s_i : s_i % F == 0 }`` (its largest dimension divisible by the ``fsdp`` axis size
  ``F``; the first such on ties) over the ``fsdp`` axis, and replicated over ``data``; arrays with no
  such dimension (scalars, odd sizes) are replicated. Each device then holds ``1/F`` of every
  sharded array; XLA gathers them where the step needs them whole (FSDP / ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ttt_compile.configs import MESH_AXES, mesh_shape


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of ``axes`` (default ``{"data": -1}``) over ``devices`` (default: all of every process)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(axes or {"data": -1}, len(devices))
    names = tuple(a for a in MESH_AXES if a in shape)
    return Mesh(np.asarray(devices, dtype=object).reshape([shape[a] for a in names]), names)


def fsdp_size(mesh: Mesh) -> int:
    return mesh.shape.get("fsdp", 1)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_spec(shape: tuple[int, ...], size: int) -> PartitionSpec:
    """``fsdp`` on the largest dimension divisible by ``size``; replicated if none (or ``size == 1``)."""
    if size <= 1:
        return PartitionSpec()
    fits = [i for i, s in enumerate(shape) if s % size == 0]
    if not fits:
        return PartitionSpec()
    axis = max(fits, key=lambda i: (shape[i], -i))
    return PartitionSpec(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def state_shardings(tree: PyTree, mesh: Mesh) -> PyTree:
    """A ``NamedSharding`` for every array leaf of ``tree`` (parameters or optimiser state)."""
    size = fsdp_size(mesh)
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), size)), tree)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """``tree`` on the devices as ``shardings`` say; weakly typed leaves (``jnp.array(1.0)``) made
    strong, so that the first update (whose outputs are strong) does not retrace the step."""
    strong = jax.tree_util.tree_map(lambda x: np.asarray(x) if getattr(x, "weak_type", False) else x, tree)
    return jax.device_put(strong, shardings)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch as global arrays split along the rows."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(tree: PyTree) -> PyTree:
    """``tree``'s arrays as numpy on this host. Replicated arrays of a multi-process mesh, which no
    process can fetch whole, are read from this process's first copy."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"an array of shape {x.shape} is split over processes: gather it first")
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def bytes_per_device(tree: PyTree) -> int:
    """Bytes of ``tree``'s arrays held by the most loaded device (from each array's shard shape)."""
    per: dict[jax.Device, int] = {}
    for x in jax.tree_util.tree_leaves(tree):
        for shard in x.addressable_shards:
            per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
    return max(per.values(), default=0)

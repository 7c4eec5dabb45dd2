"""Device mesh and shardings: the batch is split over the `data` axis, parameters
are replicated. Global batches are assembled from each process's local rows."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis `data` (Auto axis type)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Each process's local rows -> one global array per field, split on `data`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

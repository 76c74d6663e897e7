"""Several devices (``trainer.devices``), split by ``trainer.shard``: a vmapped grid's members
(``members``) or each padded batch of graphs (``data``), over a 1-D mesh.

Members: a grid's parameters, optimizer states, keys and masks carry a leading member axis and its steps
are ``vmap``ped over it, so the members are independent: ``shard_members`` places that axis over a
mesh of devices with ``NamedSharding`` and XLA (GSPMD) runs each device's members there, with no
communication; the shared inputs (the graph, the labels) are replicated. With
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` one CPU shows four devices, which is how
the tests compare this with one device.

Edges: a full-batch node task's edge arrays (senders, receivers, edge features) are split over
the mesh ``("edges",)`` and everything else is replicated (``shard_edges``). XLA (GSPMD) then
computes each device's messages from its edges and combines the segment reductions (sums, maxima)
across the devices, so a graph whose messages do not fit one device can train. The edge count is
padded to a multiple of the device count with edges whose receiver (and sender) is one past the
last node: segment reductions drop them, and their gathers read a real node's values, which reach
no output and get no gradient (``pad_edges``).

Several hosts (``trainer.distributed=true``): ``initialize_distributed`` joins the job's
processes, after which ``jax.devices()`` lists every host's devices and the meshes above span
them. Every process builds the same inputs from the same seed, and the placement functions build
global arrays from them with ``jax.make_array_from_callback``: each process fills only the shards
on its own devices (``jax.device_put`` cannot place on another host's devices). Only the main
process writes the journal and run directories (``gaflax.train``).

Data: each batch of graphs is split into one padded group per device (``gaflax.data.pad_shards``),
stacked on a leading axis that ``shard_batch`` places over the mesh ``("data",)``. The task's
steps run the model on each device's group inside ``shard_map`` and compute the loss on all the
groups' outputs together; the parameters are replicated, so differentiating through
``shard_map`` sums their gradients over the devices (an all-reduce).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "EDGE_AXIS", "data_mesh", "edge_mesh", "initialize_distributed", "is_main_process",
           "member_mesh", "pad_edges", "replicate", "resolve_devices", "shard_batch", "shard_edges", "shard_members"]

#: The mesh axis of data-parallel graph batches (also BatchNorm's ``axis_name`` there).
DATA_AXIS = "data"
#: The mesh axis of edge-sharded full-batch node training.
EDGE_AXIS = "edges"


def resolve_devices(setting) -> list:
    """``trainer.devices``: an int >= 1 (the first that many devices) or ``"all"``."""
    available = jax.devices()
    if setting == "all":
        return available
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise ValueError(f"trainer.devices={setting!r} must be an int >= 1 or 'all'")
    if setting > len(available):
        raise ValueError(f"trainer.devices={setting} but only {len(available)} {available[0].platform} device(s) "
                         "are visible (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N shows N)")
    return available[:setting]


def member_mesh(devices: list, num_members: int) -> Mesh:
    """A 1-D mesh ``("members",)`` over ``devices``; the members must split evenly over it."""
    if num_members % len(devices):
        raise ValueError(f"trainer.devices={len(devices)} must divide the grid's {num_members} members "
                         "(trainer.num_members, times the number of trainer.alphas for vmap=alphas)")
    return Mesh(np.asarray(devices), ("members",))


_DISTRIBUTED = False


def initialize_distributed() -> None:
    """``trainer.distributed=true``: ``jax.distributed.initialize()``, once per process. It finds
    the coordinator, the number of processes and this one's id from SLURM (``srun``), Open MPI, or
    ``JAX_COORDINATOR_ADDRESS`` with ``jax.distributed``'s other settings (README)."""
    global _DISTRIBUTED
    if not _DISTRIBUTED:
        jax.distributed.initialize()
        _DISTRIBUTED = True


def is_main_process() -> bool:
    """Process 0 of a multi-host job (always true on one host): the one that records and writes."""
    return jax.process_index() == 0


def _place(tree, sharding: NamedSharding):
    """Every array of ``tree`` as a global array with ``sharding``; this process fills the shards
    on its own devices from its (identical) copy of the value."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x):
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)


def shard_members(tree, mesh: Mesh):
    """Every array of ``tree`` split over the mesh along its leading (member) axis."""
    return _place(tree, NamedSharding(mesh, PartitionSpec("members")))


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` whole on every device of the mesh."""
    return _place(tree, NamedSharding(mesh, PartitionSpec()))


def data_mesh(devices: list) -> Mesh:
    """A 1-D mesh ``("data",)`` over ``devices`` for data-parallel graph batches."""
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(tree, mesh: Mesh):
    """Every array of ``tree`` split over the data mesh along its leading (device) axis."""
    return _place(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def edge_mesh(devices: list) -> Mesh:
    """A 1-D mesh ``("edges",)`` over ``devices`` for edge-sharded node training."""
    return Mesh(np.asarray(devices), (EDGE_AXIS,))


def pad_edges(graph, multiple: int):
    """``graph`` (a ``jraph.GraphsTuple`` of one graph) with its edge count padded up to a multiple of
    ``multiple``: the added edges go from and to node ``num_nodes`` (out of range), so that every
    segment reduction over the receivers drops them; edge features are padded with zeros."""
    num_edges, num_nodes = int(graph.senders.shape[0]), int(np.sum(graph.n_node))
    extra = -num_edges % multiple
    if extra == 0:
        return graph
    pad = lambda a, value: np.concatenate([np.asarray(a), np.full((extra,) + np.shape(a)[1:], value, np.asarray(a).dtype)])
    return graph._replace(senders=pad(graph.senders, num_nodes), receivers=pad(graph.receivers, num_nodes),
                          edges=None if graph.edges is None else pad(graph.edges, 0),
                          n_edge=np.asarray(graph.n_edge) + np.asarray([extra] + [0] * (len(graph.n_edge) - 1)))


def shard_edges(graph, mesh: Mesh):
    """``graph``'s senders, receivers and edge features split over the edge mesh (their count a
    multiple of its size: ``pad_edges``); its nodes and counts on every device."""
    split = NamedSharding(mesh, PartitionSpec(EDGE_AXIS))
    edge_arrays = {f: _place(getattr(graph, f), split) for f in ("senders", "receivers", "edges")
                   if getattr(graph, f) is not None}
    return replicate(graph._replace(senders=None, receivers=None, edges=None), mesh)._replace(**edge_arrays)

"""A fused Pallas kernel for GA's segment sums: each term computed and summed in one pass.

    fused_segment_sum(terms, rows, channels, segment_ids, num_segments)[s, c]
        = sum over the rows e of segment s of
      terms(*[r[e, c] for r in rows], *[k[0, c] for k in channels], *[g[s, c] for g in segments])

``terms`` is a jnp function of per-row and per-channel values (GA's ``w exp(p (log x - zref))``
for the forward pass, its KL terms for the exponent's gradient). XLA computes the terms into an
``[E, C]`` array and then reduces it; on a GPU, where aggregation is memory-bound, reading each
input once and writing only ``[S, C]`` is the point (issue #20). The rows must be sorted by segment
(``indices_are_sorted``): one program per segment loops over its rows, found by binary search,
so no atomics are needed and the sums are deterministic.

On a CPU the kernel runs in Pallas' interpret mode (tests compare it with the XLA path); it is
chosen automatically only on GPUs (``gaflax.ga``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

__all__ = ["fused_segment_sum", "kernel_available"]


def kernel_available() -> bool:
    """Whether the compiled (not interpreted) kernel can run here: a GPU backend."""
    return jax.default_backend() == "gpu"


def _kernel(terms, num_rows, num_channels):
    def kernel(offsets_ref, *refs):
        row_refs, out_ref = refs[:num_rows], refs[-1]
        channel_refs, segment_refs = refs[num_rows:num_rows + num_channels], refs[num_rows + num_channels:-1]
        s = pl.program_id(0)
        start, end = offsets_ref[s], offsets_ref[s + 1]
        shared = [r[...] for r in channel_refs] + [r[pl.ds(s, 1), :] for r in segment_refs]  # each [1, C]

        def add_row(e, acc):
            return acc + terms(*[r[pl.ds(e, 1), :] for r in row_refs], *shared)

        acc = jax.lax.fori_loop(start, end, add_row, jnp.zeros(out_ref.shape[1:], out_ref.dtype)[None])
        out_ref[pl.ds(s, 1), :] = acc

    return kernel


def fused_segment_sum(terms, rows, channels, segments, segment_ids, num_segments: int,
                      interpret: bool | None = None):
    """Per segment and channel, the sum of ``terms`` over the segment's rows (see the module doc).

    Args:
      terms: a function of the ``[1, C]`` (or ``[1, 1]``) values of each input, returning ``[1, C]``.
      rows: ``[E, C]`` arrays (one value per row and channel), or ``[E, 1]`` (per row).
      channels: ``[1, C]`` arrays (one value per channel), or ``[1, 1]``.
      segments: ``[S, C]`` arrays (one value per segment and channel: group statistics), or ``[S, 1]``.
      segment_ids: ``[E]`` integers, sorted; rows outside [0, num_segments) are dropped.
      num_segments: static S.
      interpret: Pallas interpret mode; None: interpret unless on a GPU.

    Returns:
      ``[S, C]`` in the rows' dtype; 0 for an empty segment.
    """
    if interpret is None:
        interpret = not kernel_available()
    rows, channels, segments = ([jnp.asarray(a) for a in arrays] for arrays in (rows, channels, segments))
    if any(a.ndim != 2 for a in (*rows, *channels, *segments)):
        raise ValueError(f"fused_segment_sum: every input must be 2-D, got {[a.shape for a in (*rows, *channels, *segments)]}")
    num_edges = rows[0].shape[0]
    width = max(a.shape[1] for a in (*rows, *channels, *segments))
    if (any(r.shape not in ((num_edges, width), (num_edges, 1)) for r in rows)
            or any(c.shape not in ((1, width), (1, 1)) for c in channels)
            or any(g.shape not in ((num_segments, width), (num_segments, 1)) for g in segments)):
        raise ValueError(f"fused_segment_sum: rows must be [E, C], channels [1, C] and segments [S, C] (C or 1 wide) "
                         f"with S = {num_segments}, got {[r.shape for r in rows]}, {[c.shape for c in channels]} "
                         f"and {[g.shape for g in segments]}")
    if num_edges == 0 or num_segments == 0 or width == 0:  # no rows (or nothing to write): every sum is 0
        return jnp.zeros((num_segments, width), rows[0].dtype)
    # Triton blocks are powers of two wide: pad the channels (padded columns are sliced off). Arrays
    # one value wide (a weight per row, an exponent for all channels) broadcast inside the kernel,
    # so they are never materialised at the full width.
    padded = pl.next_power_of_2(width)

    def pad(a, value):
        return a if a.shape[1] == 1 else jnp.pad(a, ((0, 0), (0, padded - width)), constant_values=value)

    rows = [pad(r, 0) for r in rows]
    channels = [pad(c, 1) for c in channels]
    segments = [pad(g, 1) for g in segments]
    # Row range of each segment: [offsets[s], offsets[s + 1]).
    offsets = jnp.searchsorted(segment_ids, jnp.arange(num_segments + 1, dtype=segment_ids.dtype),
                               side="left").astype(jnp.int32)
    out = pl.pallas_call(
        _kernel(terms, len(rows), len(channels)),
        out_shape=jax.ShapeDtypeStruct((num_segments, padded), rows[0].dtype),
        grid=(num_segments,),
        interpret=interpret,
    )(offsets, *rows, *channels, *segments)
    return out[:, :width]

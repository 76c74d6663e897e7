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
      terms: a function of ``len(rows) + len(channels)`` arrays of shape ``[1, C]`` returning ``[1, C]``.
      rows: ``[E, C]`` arrays (one value per row and channel).
      channels: ``[1, C]`` arrays (one value per channel).
      segments: ``[S, C]`` arrays (one value per segment and channel: group statistics).
      segment_ids: ``[E]`` integers, sorted; rows outside [0, num_segments) are dropped.
      num_segments: static S.
      interpret: Pallas interpret mode; None: interpret unless on a GPU.

    Returns:
      ``[S, C]`` in the rows' dtype; 0 for an empty segment.
    """
    if interpret is None:
        interpret = not kernel_available()
    rows, channels, segments = ([jnp.asarray(a) for a in arrays] for arrays in (rows, channels, segments))
    num_edges, width = rows[0].shape
    if (any(r.shape != (num_edges, width) for r in rows) or any(c.shape != (1, width) for c in channels)
            or any(g.shape != (num_segments, width) for g in segments)):
        raise ValueError(f"fused_segment_sum: rows must be [E, C], channels [1, C] and segments [S, C] with "
                         f"S = {num_segments}, got {[r.shape for r in rows]}, {[c.shape for c in channels]} and "
                         f"{[g.shape for g in segments]}")
    if num_edges == 0 or num_segments == 0 or width == 0:  # no rows (or nothing to write): every sum is 0
        return jnp.zeros((num_segments, width), rows[0].dtype)
    # Triton blocks are powers of two wide: pad the channels (padded columns are sliced off).
    padded = pl.next_power_of_2(max(width, 1))
    pad = ((0, 0), (0, padded - width))
    rows = [jnp.pad(r, pad) for r in rows]
    channels = [jnp.pad(c, pad, constant_values=1) for c in channels]
    segments = [jnp.pad(g, pad, constant_values=1) for g in segments]
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

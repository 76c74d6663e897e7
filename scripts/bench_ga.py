"""Benchmark segment_ga against segment_sum, a naive jnp power mean and PyG's PowerMeanAggregation.

    python scripts/bench_ga.py                      # all three shapes
    python scripts/bench_ga.py --shapes cora        # the small one only
    python scripts/bench_ga.py --out results/bench_ga.json

For each shape (E messages x F channels -> N segments, sorted receivers as in a GNN) it times,
in one process and in interleaved rounds so that ratios are comparable, the median over
--repeats rounds (more for fast shapes, to fill 2 s) of
  * forward, and forward + backward (value and gradient of sum(out * cotangent)),
for
  * ``segment_sum``            -- the cheapest possible segment reduction (the yardstick);
  * ``power_sum (floor)``      -- segment_sum(exp(p log x)), plain autodiff: the least work any
                                  power mean does (one log and one exp per element, one scatter),
                                  with no normalisation and no overflow guard. Not a usable mean;
                                  it shows how much of the gap to segment_sum is the arithmetic;
  * ``naive_pmean``            -- (segment_sum(x^p) / count)^(1/p) with p learned, plain autodiff;
  * ``segment_ga (x)``         -- gradient w.r.t. the data only (fixed alpha);
  * ``segment_ga (x, alpha)``  -- gradient w.r.t. data and a learned per-channel alpha;
  * the two ``segment_ga`` cases with ``[pallas]``: the fused kernel (gaflax.kernels), with
    --kernel on, or by default on a GPU (the others pass kernel="xla");
  * ``pyg_powermean``          -- torch_geometric's PowerMeanAggregation(learn=True), if installed.
It prints a table of median ms and effective GB/s (bytes of data in + out / time) and writes JSON.

XLA:CPU allocates each call's temporaries afresh, and glibc returns blocks above 32 MB (and any
block allocated from a worker thread's arena) to the kernel on free, so every call page-faults its
temporaries again. The JSON records GLIBC_TUNABLES; the README gives both settings:

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4000000000 \
        python scripts/bench_ga.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import gaflax

SHAPES = {
    "cora": (84_448, 64, 2_708),
    "1M": (1_000_000, 64, 100_000),
    "4M": (4_000_000, 32, 200_000),
    "4Mx64": (4_000_000, 64, 200_000),  # issue #20's GPU goal: segment_ga fwd+bwd <= 1.5x segment_sum
}


def _interleaved_medians_ms(fns, repeats, min_seconds=2.0):
    """Median ms of each callable, timed in rounds that call every one of them once, so that the
    machine's slow and fast spells (large on shared CPUs) hit all methods alike. After a warm-up
    call (and compile), as many rounds as ``repeats`` or, for fast cases, as fill ``min_seconds``.
    """
    warm = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - start
    rounds = max(repeats, min(200, math.ceil(min_seconds / max(sum(warm.values()), 1e-6))))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}, rounds


def jax_cases(x, ids, n, ct, kernel=False):
    """Each case is jitted with ``ids`` as an argument (as in a training step), never a constant."""
    f = x.shape[1]
    alpha = jnp.full((f,), 0.3, x.dtype)
    p0 = jnp.full((f,), gaflax.p_from_alpha(0.3), x.dtype)

    def seg_sum(x, a, ids):
        return jax.ops.segment_sum(x, ids, n, indices_are_sorted=True)

    def power_sum(x, p, ids):
        # Through a select (a no-op for x >= 0), as in gaflax: XLA:CPU then emits exp(p log x) as a
        # cleanly vectorised loop; bare, at F = 32, it was 2.5x slower (172 against 69 ms at 4M x 32).
        return jax.ops.segment_sum(jnp.exp(p[None] * jnp.log(jnp.where(x >= 0, x, 1))), ids, n, indices_are_sorted=True)

    def naive(x, p, ids):
        count = jax.ops.segment_sum(jnp.ones_like(x[:, :1]), ids, n, indices_are_sorted=True)
        mean = jax.ops.segment_sum(x ** p[None], ids, n, indices_are_sorted=True) / jnp.maximum(count, 1)
        return mean ** (1 / p[None])

    def ga(x, a, ids):
        return gaflax.segment_ga(x, ids, n, alpha=a, indices_are_sorted=True, kernel="xla")

    def ga_fused(x, a, ids):  # gaflax.kernels: the fused Pallas sums
        return gaflax.segment_ga(x, ids, n, alpha=a, indices_are_sorted=True, kernel="pallas")

    cases = {
        "segment_sum": (seg_sum, alpha, (0,)),
        "power_sum (floor)": (power_sum, p0, (0,)),
        "naive_pmean": (naive, p0, (0, 1)),
        "segment_ga (x)": (ga, alpha, (0,)),
        "segment_ga (x, alpha)": (ga, alpha, (0, 1)),
    }
    if kernel:
        cases["segment_ga (x) [pallas]"] = (ga_fused, alpha, (0,))
        cases["segment_ga (x, alpha) [pallas]"] = (ga_fused, alpha, (0, 1))
    out = {}
    for name, (fn, expo, argnums) in cases.items():
        fwd = jax.jit(fn)
        loss = lambda x, e, ids, ct, fn=fn: jnp.sum(fn(x, e, ids) * ct)  # noqa: E731
        fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=argnums))
        out[name] = (
            lambda fwd=fwd, e=expo: jax.block_until_ready(fwd(x, e, ids)),
            lambda fb=fwd_bwd, e=expo: jax.block_until_ready(fb(x, e, ids, ct)),
        )
    return out


def pyg_cases(x_np, ids_np, n, ct_np):
    try:
        import torch
        from torch_geometric.nn.aggr import PowerMeanAggregation
    except ImportError:
        return {}, None
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(x_np)
    index = torch.from_numpy(ids_np.astype(np.int64))
    ct = torch.from_numpy(ct_np)
    aggr = PowerMeanAggregation(p=float(gaflax.p_from_alpha(0.3)), learn=True, channels=x.shape[1])

    def fwd():
        with torch.no_grad():
            aggr(x, index, dim_size=n)

    xg = x.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = None
        aggr.zero_grad()
        (aggr(xg, index, dim_size=n) * ct).sum().backward()

    return {"pyg_powermean": (fwd, fwd_bwd)}, f"torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-pyg", action="store_true", help="skip PyTorch Geometric even if installed")
    parser.add_argument("--kernel", choices=["auto", "on", "off"], default="auto",
                        help="also time segment_ga with the fused Pallas kernel (auto: on a GPU; on a CPU it "
                             "only runs interpreted, far slower)")
    parser.add_argument("--out", default="results/bench_ga.json")
    args = parser.parse_args()
    from gaflax.kernels import kernel_available

    kernel = args.kernel == "on" or (args.kernel == "auto" and kernel_available())

    rows = []
    pyg_version = None
    for shape_name in args.shapes:
        e, f, n = SHAPES[shape_name]
        rng = np.random.default_rng(0)
        ids_np = np.sort(rng.integers(0, n, e)).astype(np.int32)
        x_np = rng.uniform(0.05, 5.0, (e, f)).astype(np.float32)
        ct_np = rng.normal(size=(n, f)).astype(np.float32)
        x, ids, ct = jnp.asarray(x_np), jnp.asarray(ids_np), jnp.asarray(ct_np)
        cases = jax_cases(x, ids, n, ct, kernel)
        if not args.no_pyg:
            extra, pyg_version = pyg_cases(x_np, ids_np, n, ct_np)
            cases.update(extra)
        gbytes = 4 * (e * f + n * f) / 1e9
        fns = {(name, "fwd"): fwd for name, (fwd, _) in cases.items()}
        fns.update({(name, "fwd_bwd"): fwd_bwd for name, (_, fwd_bwd) in cases.items()})
        medians, rounds = _interleaved_medians_ms(fns, args.repeats)
        for name in cases:
            t_f, t_fb = medians[(name, "fwd")], medians[(name, "fwd_bwd")]
            rows.append(dict(shape=shape_name, E=e, F=f, N=n, method=name, fwd_ms=t_f, fwd_bwd_ms=t_fb,
                             fwd_gbps=gbytes / (t_f / 1e3), fwd_bwd_gbps=2 * gbytes / (t_fb / 1e3), rounds=rounds))
            print(f"  {shape_name:>5} {name:<24} fwd {t_f:9.2f} ms   fwd+bwd {t_fb:9.2f} ms   ({rounds} rounds)", flush=True)
        del cases, fns

    # Ratios against segment_sum (and PyG) within the same shape, measured in this one run.
    base = {(r["shape"]): r for r in rows if r["method"] == "segment_sum"}
    pyg = {(r["shape"]): r for r in rows if r["method"] == "pyg_powermean"}
    for r in rows:
        r["fwd_bwd_vs_segment_sum"] = r["fwd_bwd_ms"] / base[r["shape"]]["fwd_bwd_ms"]
        if r["shape"] in pyg:
            r["pyg_fwd_bwd_speedup"] = pyg[r["shape"]]["fwd_bwd_ms"] / r["fwd_bwd_ms"]

    header = "| shape (E x F -> N) | method | fwd ms | fwd+bwd ms | fwd+bwd GB/s | fwd+bwd / segment_sum | PyG / this (fwd+bwd) |"
    print()
    print(header)
    print("|" + "---|" * 7)
    for r in rows:
        speedup = f"{r['pyg_fwd_bwd_speedup']:.1f}x" if "pyg_fwd_bwd_speedup" in r else "-"
        print(f"| {r['shape']} ({r['E']:,} x {r['F']} -> {r['N']:,}) | {r['method']} | {r['fwd_ms']:.2f} | "
              f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_gbps']:.1f} | {r['fwd_bwd_vs_segment_sum']:.2f}x | {speedup} |")

    write_results(args.out, rows, pyg=pyg_version, repeats=args.repeats)


def write_results(out, rows, **meta):
    """The rows as JSON in ``out``, with the machine and library versions."""
    meta = dict(jax=jax.__version__, device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                machine=platform.machine(), python=platform.python_version(),
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""), **meta)
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

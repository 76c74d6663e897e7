"""Benchmark every registered aggregator, forward and forward + backward, beside PyG's counterparts.

    python scripts/bench_aggregators.py                          # the Cora and 1M shapes
    python scripts/bench_aggregators.py --shapes cora --repeats 5
    python scripts/bench_aggregators.py --out results/bench_aggregators.json

For each shape (E messages x C channels -> N receivers, sorted as in a GNN), every operator in
``gaflax.pooling.AGGREGATORS`` is timed through the registry (``pooling.make``, initial parameters,
uniform attention weights), jitted with the receivers as an argument, as a median over rounds
that call every case once (interleaved, so the machine's slow and fast spells hit all alike).
The backward pass is the gradient w.r.t. the messages and the operator's own parameters (GA's
alpha learned per channel). Where PyG 2.8 (and the ``genagg`` package) are installed, their
modules with the same parameters are timed in the same rounds, and the table gives PyG's time
over gaflax's per aggregator (above 1: gaflax is faster). LAF has no installable peer.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gaflax import pooling

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_ga import _interleaved_medians_ms, write_results  # noqa: E402  (the shared timer and writer)

#: (E, C, N): Cora's GAT layer (13,264 messages with self-loops, 8 heads x 8 channels as 64), 1M.
SHAPES = {"cora": (13_264, 64, 2_708), "1M": (1_000_000, 16, 100_000)}
#: gaflax operator -> its peer in this script (GA beside PyG's clamped power mean, its closest).
PEERS = {"weighted_sum": "pyg_sum", "sum": "pyg_sum", "ga": "pyg_powermean", "mean": "pyg_mean", "max": "pyg_max",
         "min": "pyg_min", "softmax_learned": "pyg_softmax_learned", "powermean": "pyg_powermean", "var": "pyg_var",
         "std": "pyg_std", "pna": "pyg_pna", "genagg": "genagg_package"}


def gaflax_cases(x, ids, n, ct):
    """name -> (forward, forward + backward), each a thunk that blocks until done."""
    messages = x[:, None, :]  # [E, 1, C]: one head
    weights = jnp.ones((x.shape[0], 1), x.dtype)
    cases = {}
    for name in sorted({entry.fn: name for name, entry in sorted(pooling.AGGREGATORS.items(), reverse=True)}.values()):
        entry = pooling.AGGREGATORS[name]
        fn, _ = pooling.make(name, positive="softplus", delta=math.log(x.shape[0] / n + 1))
        params = fn.initial_params(jax.random.key(0), messages.shape[1:]) if fn.params else {}
        alpha = jnp.full((1, x.shape[1]), 0.3, x.dtype) if entry.takes_exponent else None

        def call(m, params, alpha, ids, fn=fn):
            out = fn(m, ids, n, weights=weights, alpha=alpha, params=params or None)
            return out[:, 0, :]

        forward = jax.jit(call)
        loss = lambda m, params, alpha, ids, call=call: jnp.sum(call(m, params, alpha, ids) * ct)  # noqa: E731
        backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2) if alpha is not None else (0, 1)))
        cases[name] = (lambda f=forward, p=params, a=alpha: jax.block_until_ready(f(messages, p, a, ids)),
                       lambda b=backward, p=params, a=alpha: jax.block_until_ready(b(messages, p, a, ids)))
    return cases


def peer_cases(x_np, ids_np, n, ct_np):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            from torch_geometric.nn import aggr
    except ImportError:
        return {}, None
    torch.set_num_threads(os.cpu_count() or 1)
    c = x_np.shape[1]
    index = torch.from_numpy(ids_np.astype(np.int64))
    ct = torch.from_numpy(ct_np)
    histogram = torch.from_numpy(np.bincount(np.bincount(ids_np, minlength=n)))
    modules = {
        "pyg_sum": aggr.SumAggregation(), "pyg_mean": aggr.MeanAggregation(), "pyg_max": aggr.MaxAggregation(),
        "pyg_min": aggr.MinAggregation(), "pyg_var": aggr.VarAggregation(), "pyg_std": aggr.StdAggregation(),
        "pyg_softmax_learned": aggr.SoftmaxAggregation(learn=True, channels=c),
        "pyg_powermean": aggr.PowerMeanAggregation(learn=True, channels=c),
    }
    pna_scaler = aggr.DegreeScalerAggregation(["mean", "min", "max", "std"],
                                              ["identity", "amplification", "attenuation"], histogram)
    pna_mix = torch.nn.Linear(12 * c, c)
    modules["pyg_pna"] = lambda v, index, dim_size: pna_mix(pna_scaler(v, index, dim_size=dim_size))
    try:
        from genagg import GenAgg
        from genagg.MLPAutoencoder import MLPAutoencoder

        # The package's defaults (batch normalisation on), as gaflax's port and its equality test use.
        modules["genagg_package"] = GenAgg(f=MLPAutoencoder(layer_sizes=pooling.GENAGG_WIDTHS, init=None, jit=False,
                                                            enforce_inverse=False))
    except ImportError:
        pass
    x = torch.from_numpy(x_np)
    cases = {}
    for name, module in modules.items():
        def forward(module=module):
            with torch.no_grad():
                module(x, index, dim_size=n)

        xg = x.clone().requires_grad_(True)

        def backward(module=module, xg=xg):
            xg.grad = None
            (module(xg, index, dim_size=n) * ct).sum().backward()

        cases[name] = (forward, backward)
    return cases, f"torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="skip PyG and genagg even if installed")
    parser.add_argument("--out", default="results/bench_aggregators.json")
    args = parser.parse_args()

    rows, peer_version = [], None
    for shape in args.shapes:
        e, c, n = SHAPES[shape]
        rng = np.random.default_rng(0)
        ids_np = np.sort(rng.integers(0, n, e)).astype(np.int32)
        x_np = rng.normal(0.5, 1.0, (e, c)).astype(np.float32)
        ct_np = rng.normal(size=(n, c)).astype(np.float32)
        cases = gaflax_cases(jnp.asarray(x_np), jnp.asarray(ids_np), n, jnp.asarray(ct_np))
        if not args.no_peers:
            peers, peer_version = peer_cases(x_np, ids_np, n, ct_np)
            cases.update(peers)
        fns = {(name, "fwd"): f for name, (f, _) in cases.items()}
        fns.update({(name, "fwd_bwd"): b for name, (_, b) in cases.items()})
        medians, rounds = _interleaved_medians_ms(fns, args.repeats)
        for name in cases:
            rows.append(dict(shape=shape, E=e, C=c, N=n, method=name, fwd_ms=medians[(name, "fwd")],
                             fwd_bwd_ms=medians[(name, "fwd_bwd")], rounds=rounds))
            print(f"  {shape:>5} {name:<22} fwd {medians[(name, 'fwd')]:9.2f} ms   "
                  f"fwd+bwd {medians[(name, 'fwd_bwd')]:9.2f} ms", flush=True)

    by = {(r["shape"], r["method"]): r for r in rows}
    print("\n| shape (E x C -> N) | aggregator | fwd ms | fwd+bwd ms | peer | peer fwd ms | peer fwd+bwd ms | "
          "peer / gaflax (fwd, fwd+bwd) |")
    print("|" + "---|" * 8)
    for r in rows:
        if r["method"] not in pooling.AGGREGATORS:
            continue
        peer = by.get((r["shape"], PEERS.get(r["method"])))
        if peer:
            r["peer"] = peer["method"]
            r["peer_speedup_fwd"] = peer["fwd_ms"] / r["fwd_ms"]
            r["peer_speedup_fwd_bwd"] = peer["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        cells = (f"{peer['method']} | {peer['fwd_ms']:.2f} | {peer['fwd_bwd_ms']:.2f} | "
                 f"{r['peer_speedup_fwd']:.2f}x, {r['peer_speedup_fwd_bwd']:.2f}x") if peer else "- | - | - | -"
        print(f"| {r['shape']} ({r['E']:,} x {r['C']} -> {r['N']:,}) | {r['method']} | {r['fwd_ms']:.2f} | "
              f"{r['fwd_bwd_ms']:.2f} | {cells} |")
    write_results(args.out, rows, peers=peer_version, repeats=args.repeats)


if __name__ == "__main__":
    main()

"""Which difference makes gaflax's GenAgg train worse than the ``genagg`` package on the
aggregator-regression benchmark? One variant per call, the rest of the code unchanged (README,
Ablation 4, the table of variants):

    python scripts/probe_genagg.py base|slots|free|both|noaux [target]     # default target: std

- ``base``: gaflax's GenAgg as registered;
- ``slots``: the unused edge slots (the task's dummy segment) out of range, so batch norm skips them;
- ``free``: a and b unclipped, as the package leaves them;
- ``both``: slots and free;
- ``noaux``: no inverse-reconstruction loss (``pool.inverse_loss=false``), the package as it runs.

500 steps, 3 vmapped seeds; each variant's journal and run directory go to ``/tmp/genagg_probe``.
A probe: the two variants that patch the library (``slots``, ``free``) exist only here."""

import dataclasses
import os
import runpy
import sys

import jax.numpy as jnp

sys.path.insert(0, os.getcwd())
from gaflax import pooling  # noqa: E402


def main(variant: str, target: str = "std"):
    entry, fn = pooling.AGGREGATORS._entries["genagg"], pooling.genagg
    if variant not in ("base", "slots", "free", "both", "noaux"):
        raise SystemExit(f"variant {variant!r} must be base, slots, free, both or noaux")
    if variant in ("free", "both"):
        pooling.unit_interval = lambda raw: raw  # genagg looks the name up when it is traced
    if variant in ("slots", "both"):
        def genagg_slots(messages, segment_ids, num_segments, weights=None, alpha=None, params=None, with_aux=False,
                         **options):
            # the dummy segment (num_segments - 1) becomes out of range, as gaflax.devices.pad_edges' padding
            got = fn(messages, segment_ids, num_segments - 1, weights, alpha, params, with_aux, **options)
            pad = lambda out: jnp.concatenate([out, jnp.zeros((1,) + out.shape[1:], out.dtype)])  # noqa: E731
            return (pad(got[0]), got[1]) if with_aux else pad(got)
        pooling.AGGREGATORS._entries["genagg"] = dataclasses.replace(entry, fn=genagg_slots)
    sys.argv = ["train", "experiment=aggregator_regression", "pool=genagg", f"dataset.options.target={target}",
                f"pool.inverse_loss={variant != 'noaux'}", "trainer.max_epochs=5", "trainer.patience=5",
                "trainer.num_members=3", "trainer.progress=false", f"journal.path=/tmp/genagg_probe/{variant}.sqlite",
                f"hydra.run.dir=/tmp/genagg_probe/{variant}_{target}"]
    runpy.run_module("experiments.train", run_name="__main__")


if __name__ == "__main__":
    main(*sys.argv[1:])

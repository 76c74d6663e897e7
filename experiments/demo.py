"""A one-minute tour of the Generalized Average: ``python -m experiments.demo``.

Prints the five named means of one vector, a per-channel segment GA, and gradients at the
limits alpha = +-1 and alpha = 0 (where the plain formula gives 0/0).
"""

import jax
import jax.numpy as jnp

import gaflax

NAMED = {-1.0: "min", -0.5: "harmonic", 0.0: "geometric", 0.5: "arithmetic", 1.0: "max"}


def main():
    x = jnp.array([1.0, 2.0, 4.0, 8.0])
    print(f"x = {x.tolist()}")
    for alpha, name in NAMED.items():
        value = gaflax.ga(x, alpha=alpha)
        d_alpha = jax.grad(lambda a: gaflax.ga(x, alpha=a))(alpha)
        print(f"  alpha={alpha:+.1f}  p={float(gaflax.p_from_alpha(alpha)):+8.3g}  {name:<10} "
              f"M={float(value):.6f}  dM/dalpha={float(d_alpha):+.6f}")

    # Segment form: 6 messages into 3 nodes, one exponent per channel (max, geometric, min).
    data = jnp.arange(1.0, 13.0).reshape(6, 2).repeat(3, axis=1)[:, :3]
    receivers = jnp.array([0, 0, 1, 1, 1, 2])
    out = gaflax.segment_ga(data, receivers, num_segments=3, alpha=jnp.array([1.0, 0.0, -1.0]))
    print("segment_ga, per-channel alpha = (1, 0, -1):")
    print(out)


if __name__ == "__main__":
    main()

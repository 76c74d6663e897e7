"""The one place where gaflax touches jraph.

jraph 0.0.6.dev0 (its last release, 2022) calls ``jax.tree_map`` and ``jax.tree_leaves``,
which new JAX removed in favour of ``jax.tree.map`` / ``jax.tree.leaves``. We restore the two
aliases before jraph is imported, so that the rest of gaflax can use jraph unchanged::

    from gaflax.compat import jraph
"""

import jax

if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map
if not hasattr(jax, "tree_leaves"):
    jax.tree_leaves = jax.tree.leaves

import jraph  # noqa: E402  (must come after the aliases above)

__all__ = ["jraph"]

"""gaflax: pooling experiments in JAX built around the Generalized Average (GA).

The primitive (``gaflax.ga``) is re-exported here; see the README for the rest.
"""

from gaflax.ga import (
    EMPTY_LOG_FILL,
    alpha_from_p,
    ga,
    log_ga,
    p_from_alpha,
    segment_ga,
    segment_log_ga,
)

__version__ = "0.1.0"

__all__ = [
    "EMPTY_LOG_FILL",
    "alpha_from_p",
    "ga",
    "log_ga",
    "p_from_alpha",
    "segment_ga",
    "segment_log_ga",
]

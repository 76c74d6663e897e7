"""Typed run configuration: plain dataclasses, validated before anything is compiled.

Hydra (in ``experiments/``) composes YAML and converts it with ``Config.from_dict``; the library
never sees a DictConfig, so nothing Hydra-specific can reach a jit static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gaflax import losses, pooling
from gaflax.models import ALPHA_SCOPES


@dataclasses.dataclass
class DatasetConfig:
    name: str = "cora"
    root: str | None = None  # None: $GAFLAX_DATA, else ~/.cache/gaflax
    normalize_features: bool = True
    options: dict = dataclasses.field(default_factory=dict)  # e.g. synthetic generator parameters


@dataclasses.dataclass
class ModelConfig:
    name: str = "gat"  # "gat" for graphs; "mlp" for tabular data (uses hidden, num_layers, dropout)
    hidden: int = 8
    heads: int = 8
    out_heads: int = 1
    num_layers: int = 2
    v2: bool = False
    attention: bool = True  # false: neighbours weigh 1 / in-degree (isolates the aggregator)
    aggregate_first: bool = False  # true: x -> aggregate -> project (the GA acts on the features)
    dropout: float = 0.6
    attention_dropout: float = 0.6
    add_self_loops: bool = True
    readout: str = "sum"  # graph classification: a name from gaflax.pooling (sum, mean, max, ga, ...)
    mlp: tuple = (64,)  # graph classification: hidden widths after the readout
    readout_lr_mult: float = 10.0  # readout=ga: its learned alpha is tanh(readout_lr_mult * theta)


@dataclasses.dataclass
class PoolConfig:
    name: str = "weighted_sum"
    alpha: float = 0.5
    learn: bool = False
    scope: str = "layer"
    lr_mult: float = 1.0
    positive: str = "softplus"


@dataclasses.dataclass
class LossConfig:
    name: str = "ce"  # one of gaflax.losses.LOSSES: ce, weighted_ce, focal, ga
    gamma: float = 2.0  # focal
    alpha: float = 0.5  # ga: the GA exponent over per-example (or per-class) losses; 0.5 is the mean
    per_class: bool = False  # ga: GA of the class-mean losses


@dataclasses.dataclass
class OptimizerConfig:
    lr: float = 0.005
    weight_decay: float = 5e-4  # L2 on the weights (added to the gradient), as in the GAT paper


@dataclasses.dataclass
class TrainerConfig:
    max_epochs: int = 1000
    patience: int = 100
    progress: bool = True
    batch_size: int = 32  # graph classification
    fold: int = 0  # graph classification: which of the 10 outer folds is the test set
    # One vmapped program for many runs (node tasks): "seeds" trains num_members seeds (seed,
    # seed + 1, ...); "alphas" trains every fixed GA exponent in `alphas` times those seeds.
    vmap: str = "none"
    num_members: int = 1
    alphas: tuple = ()
    # Early stopping and the best epoch follow this validation metric (and the validation loss):
    # accuracy (the GAT paper), loss, or for binary tasks roc_auc / average_precision.
    monitor: str = "accuracy"
    # Imbalance: "balanced" draws a class-balanced subset of the training nodes each epoch (node
    # classification); random_over / random_under / smote / tomek resample tabular training rows.
    resample: str = "none"
    evaluate_test: bool = True  # false while tuning: the test set is then never touched


@dataclasses.dataclass
class DecisionConfig:
    """How a binary classifier turns scores into decisions, and the GA score it reports.

    ``{split}/ga_score`` is the GA, at exponent ``p``, of (precision, recall) with weights
    (precision_weight, 1 - precision_weight): p = -1 with 0.5 is F1, p = 0 the Fowlkes-Mallows
    index, p = -inf min(P, R); a precision weight above 0.5 makes false positives cost more.
    ``threshold: tuned`` picks the threshold that maximises that score on the validation set and
    applies it to every split; ``argmax`` predicts the most probable class.
    """

    threshold: str = "argmax"
    p: float = -1.0
    precision_weight: float = 0.5

    @property
    def weights(self) -> tuple[float, float]:
        """(w_precision, w_recall) for ``gaflax.metrics.ga_score``."""
        return (self.precision_weight, 1 - self.precision_weight)


@dataclasses.dataclass
class Config:
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    decision: DecisionConfig = dataclasses.field(default_factory=DecisionConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    seed: int = 0
    hypothesis: str | None = None  # recorded in the journal; not part of the experiment's identity

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        """Build from nested plain dicts; unknown keys are an error that names them."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in raw.items():
            if key not in sections:
                raise ValueError(f"config: unknown key {key!r}; expected one of {sorted(sections)}")
            section_cls = SECTIONS.get(key)
            if section_cls is None:
                kwargs[key] = value
                continue
            names = {f.name for f in dataclasses.fields(section_cls)}
            unknown = sorted(set(value or {}) - names)
            if unknown:
                raise ValueError(f"config: unknown key(s) {unknown} in {key!r}; expected some of {sorted(names)}")
            kwargs[key] = section_cls(**(value or {}))
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self):
        def check(ok, message):
            if not ok:
                raise ValueError(f"config: {message}")

        p, m, o, t = self.pool, self.model, self.optimizer, self.trainer
        check(p.name in pooling.AGGREGATORS, f"pool.name={p.name!r} is not one of {sorted(pooling.AGGREGATORS)}")
        check(-1 <= p.alpha <= 1, f"pool.alpha={p.alpha} must lie in [-1, 1]")
        check(p.scope in ALPHA_SCOPES, f"pool.scope={p.scope!r} must be one of {ALPHA_SCOPES}")
        check(p.lr_mult > 0, f"pool.lr_mult={p.lr_mult} must be positive")
        check(p.positive in pooling.POSITIVE, f"pool.positive={p.positive!r} must be one of {sorted(pooling.POSITIVE)}")
        check(self.loss.name in losses.LOSSES, f"loss.name={self.loss.name!r} is not one of {losses.LOSSES}")
        check(self.loss.gamma >= 0, f"loss.gamma={self.loss.gamma} must be >= 0")
        check(-1 <= self.loss.alpha <= 1, f"loss.alpha={self.loss.alpha} must lie in [-1, 1]")
        check(m.name in MODELS, f"model.name={m.name!r} is not one of {MODELS}")
        check(m.readout in pooling.AGGREGATORS, f"model.readout={m.readout!r} is not one of {sorted(pooling.AGGREGATORS)}")
        check(m.readout_lr_mult > 0, f"model.readout_lr_mult={m.readout_lr_mult} must be positive")
        check(t.batch_size >= 1, f"trainer.batch_size={t.batch_size} must be >= 1")
        check(t.vmap in ("none", "seeds", "alphas"), f"trainer.vmap={t.vmap!r} must be 'none', 'seeds' or 'alphas'")
        if t.vmap == "alphas":
            check(p.name in pooling.USES_ALPHA and not p.learn,
                  f"trainer.vmap=alphas needs a fixed-exponent pool (ga, log_ga, softmax with pool.learn=false); "
                  f"got pool.name={p.name!r}, pool.learn={p.learn}")
            check(len(t.alphas) >= 1 and all(-1 <= a <= 1 for a in t.alphas),
                  f"trainer.alphas={list(t.alphas)} must be a non-empty list of values in [-1, 1]")
        check(t.num_members >= 1, f"trainer.num_members={t.num_members} must be >= 1")
        check(0 <= t.fold < 10, f"trainer.fold={t.fold} must lie in 0..9")
        check(t.monitor in MONITORS, f"trainer.monitor={t.monitor!r} must be one of {MONITORS}")
        check(t.resample in RESAMPLE, f"trainer.resample={t.resample!r} must be one of {RESAMPLE}")
        d = self.decision
        check(d.threshold in ("argmax", "tuned"), f"decision.threshold={d.threshold!r} must be 'argmax' or 'tuned'")
        check(0 < d.precision_weight < 1, f"decision.precision_weight={d.precision_weight} must lie in (0, 1)")
        check(d.p == d.p, "decision.p must be a number (-inf and inf are allowed)")
        for name in ("dropout", "attention_dropout"):
            value = getattr(m, name)
            check(0 <= value < 1, f"model.{name}={value} must lie in [0, 1)")
        for name in ("hidden", "heads", "out_heads", "num_layers"):
            check(getattr(m, name) >= 1, f"model.{name}={getattr(m, name)} must be >= 1")
        check(o.lr > 0, f"optimizer.lr={o.lr} must be positive")
        check(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
        check(t.max_epochs >= 1 and t.patience >= 1, "trainer.max_epochs and trainer.patience must be >= 1")
        check(self.hypothesis is None or isinstance(self.hypothesis, str), "hypothesis must be a string or null")
        check(isinstance(self.seed, int) and self.seed >= 0, f"seed={self.seed!r} must be a non-negative int")


MODELS = ("gat", "mlp")
MONITORS = ("accuracy", "loss", "roc_auc", "average_precision")
RESAMPLE = ("none", "balanced", "random_over", "random_under", "smote", "tomek")
SECTIONS = {"dataset": DatasetConfig, "model": ModelConfig, "pool": PoolConfig, "loss": LossConfig,
            "decision": DecisionConfig, "optimizer": OptimizerConfig, "trainer": TrainerConfig}

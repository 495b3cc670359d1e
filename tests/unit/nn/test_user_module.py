"""Bring your own model: a plain torch.nn.Module (tests/user_code/user_nets.py, no mamlpp
meta-layers) meta-learned through `model=module model._target_=...`, and the meta-optimizer
chosen in config.

Its float64 second-order meta-gradient is checked against finite differences, vmap against the
per-task loop, and a short CLI run on real Omniglot must clearly beat chance.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from helpers.gradients import central_difference, meta_gradients, random_index
from helpers.paths import REPO_ROOT, USER_CODE
from mamlpp.algorithms.meta_learner import MetaLearner
from mamlpp.algorithms.optimizer import build_optimizer
from mamlpp.config import (
    AlgorithmConfig,
    Config,
    ConfigError,
    OptimizerConfig,
    model_config,
    validate,
)
from mamlpp.nn.contract import MetaBackbone

sys.path.insert(0, str(USER_CODE))

pytestmark = pytest.mark.usefixtures("single_thread")


def module_learner(
    vectorize: bool = True, target: str = "SmallCNN", model_keys: dict | None = None, **algorithm
) -> MetaLearner:
    torch.manual_seed(0)
    model = model_config(
        name="module",
        _target_=f"user_nets.{target}",
        kwargs={"width": 6} if target in ("SmallCNN", "EveryNorm", "FunctionalDropout") else {},
        vectorize=vectorize,
        **(model_keys or {}),
    )
    options = dict(inner_steps=2, inner_lr=0.3, **algorithm)
    return MetaLearner(AlgorithmConfig(**options), model, 1, 12, 5, total_iterations=10)


def grads(learner: MetaLearner, batch, weights=None) -> dict[str, torch.Tensor]:
    return meta_gradients(learner, batch, 2, True, weights)


def test_wrapper_meets_the_backbone_contract() -> None:
    learner = module_learner()
    assert isinstance(learner.net, MetaBackbone)
    assert learner.net.head_names == {"module.classifier.weight", "module.classifier.bias"}
    # BatchNorm affine weights are shared by the tasks (not adapted) unless inner_adapt_bn.
    assert "module.features.1.weight" in learner.net.norm_names
    assert "module.features.1.weight" not in learner.fast_names
    # Batch statistics only: no running buffers that a vmapped forward would write into.
    assert not any("running" in n for n, _ in learner.named_buffers())
    # The wrapper's state is the module's, each tensor once.
    module_state = learner.net.module.state_dict()
    assert set(learner.net.state_dict()) == {f"module.{k}" for k in module_state}


def test_second_order_meta_gradient_matches_finite_differences(make_batch) -> None:
    learner = module_learner(multi_step_loss=True, learn_inner_lr=True).double()
    batch = make_batch(tasks=2, seed=4, image_size=12, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)

    def meta_loss() -> float:
        loss, _ = learner.adapt_and_predict(batch, 2, True, True, weights)
        return loss.mean().item()

    analytic = grads(learner, batch, weights)
    named = dict(learner.named_parameters())
    picks = [
        "net.module.features.0.weight",
        "net.module.features.4.bias",
        "net.module.features.1.weight",  # batch-norm scale: meta-learned, not adapted
        "net.module.classifier.weight",
        "inner_lrs.rates.module__features__4__weight",
    ]
    g = torch.Generator().manual_seed(0)
    for name in picks:
        p = named[name]
        idx = random_index(p, g)
        numeric = central_difference(meta_loss, p, idx, eps=1e-6)
        assert analytic[name][idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_first_order_drops_the_second_order_term(make_batch) -> None:
    """No silent fallback: the two orders give different meta-gradients for the module."""
    learner = module_learner().double()
    batch = make_batch(tasks=2, seed=4, image_size=12, dtype=torch.float64)
    second = grads(learner, batch)["net.module.features.0.weight"]
    loss, _ = learner.adapt_and_predict(batch, 2, True, False)
    first = torch.autograd.grad(loss.mean(), learner.net.module.features[0].weight)[0]
    assert not torch.allclose(first, second)


def test_vmap_equals_the_per_task_loop(make_batch) -> None:
    batch = make_batch(tasks=3, seed=2, image_size=12, dtype=torch.float64)
    batched = grads(module_learner(vectorize=True).double(), batch)
    looped = grads(module_learner(vectorize=False).double(), batch)
    assert batched.keys() == looped.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-10, atol=1e-12)


def test_each_task_normalises_with_its_own_statistics(make_batch) -> None:
    """Transductive batch norm per task: a task's predictions do not depend on the other
    tasks of the batch."""
    learner = module_learner().double()
    batch = make_batch(tasks=3, seed=6, image_size=12, dtype=torch.float64)
    together = learner.predict(batch, 2)
    alone = learner.predict(batch.select(slice(1, 2)), 2)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("adapt", ["head", "body", "features.0.*"])
def test_which_weights_adapt(adapt: str, make_batch) -> None:
    learner = module_learner(adapt=adapt if "*" not in adapt else f"module.{adapt}").double()
    head = set(learner.net.head_names)
    batch = make_batch(tasks=2, seed=1, image_size=12, dtype=torch.float64)
    fast = learner.adapt(batch.xs, batch.ys, 2)
    params = dict(learner.net.named_parameters())
    moved = {n for n in fast if not torch.equal(fast[n], params[n].expand_as(fast[n]))}
    expected = {
        "head": head,
        "body": set(learner.fast_names) - head,
        "features.0.*": {"module.features.0.weight", "module.features.0.bias"},
    }[adapt]
    # Everything else stays put; a conv bias right before batch norm gets a zero gradient (the
    # normalisation removes it), so only the weights among `expected` must have moved.
    assert moved <= expected
    assert {n for n in expected if n.endswith("weight")} <= moved


def test_config_errors_name_the_key() -> None:
    def cfg(**model) -> Config:
        return Config(
            model=model_config(**model),
            algorithm=AlgorithmConfig(name="maml"),
        )

    validate(cfg(name="module", _target_="user_nets.SmallCNN"))
    with pytest.raises(ConfigError, match="model._target_"):
        validate(cfg(name="module"))
    with pytest.raises(ConfigError, match="model._target_.*model=module"):
        validate(cfg(_target_="user_nets.SmallCNN"))
    mamlpp = Config(
        model=model_config(name="module", _target_="user_nets.SmallCNN"),
        algorithm=AlgorithmConfig(per_step_bn_stats=True),
    )
    with pytest.raises(ConfigError, match="algorithm.per_step_bn_stats.*model=module"):
        validate(mamlpp)
    with pytest.raises(ConfigError, match="algorithm.adapt"):
        validate(Config(algorithm=AlgorithmConfig(adapt="haed")))


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("user_nets.Missing", {}, "model._target_.*cannot import"),
        ("torch.optim.Adam", {}, "not a torch.nn.Module"),
        ("user_nets.SmallCNN", {"widht": 3}, r"model.kwargs.*constructor takes \(in_channels"),
    ],
)
def test_bad_module_is_one_line(target: str, kwargs: dict, message: str) -> None:
    model = model_config(name="module", _target_=target, kwargs=kwargs)
    with pytest.raises(ConfigError, match=message) as err:
        MetaLearner(AlgorithmConfig(name="maml"), model, 1, 12, 5, 10)
    assert "\n" not in str(err.value)


def test_anil_needs_a_head() -> None:
    with pytest.raises(ConfigError, match="algorithm.adapt.*selects no weight"):
        module_learner(target="NoHead", adapt="head")


def test_optimizer_from_config() -> None:
    params = [torch.nn.Parameter(torch.ones(2))]
    sgd = build_optimizer(OptimizerConfig("torch.optim.SGD", {"momentum": 0.9}), params, 0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="optimizer._target_.*not a torch.optim.Optimizer"):
        build_optimizer(OptimizerConfig("torch.nn.Linear"), params, 0.5)
    with pytest.raises(ConfigError, match="optimizer.kwargs"):
        build_optimizer(OptimizerConfig("torch.optim.SGD", {"momentun": 0.9}), params, 0.5)


@pytest.mark.slow
def test_user_module_trains_through_the_cli(cli, tmp_path) -> None:
    """The module, which lives only in tests/user_code, learns Omniglot: the 5-way test
    accuracy's 95% interval lies well above chance (20%)."""
    run = tmp_path / "run"
    env = {
        **cli.env,
        "PYTHONPATH": os.pathsep.join([str(USER_CODE), os.environ.get("PYTHONPATH", "")]),
    }
    args = [
        *cli.data_args,
        "experiment=smoke",
        "device=cpu",
        "progress_bar=false",
        "algorithm=maml",
        "model=module",
        "model._target_=user_nets.SmallCNN",
        "+model.kwargs.width=32",
        "optimizer._target_=torch.optim.AdamW",
        "+optimizer.kwargs.weight_decay=0.0001",
        "algorithm.inner_steps=2",
        "algorithm.inner_steps_eval=2",
        "train.iters_per_epoch=12",
        "train.meta_batch_size=8",
        "eval.test_tasks=100",
        f"hydra.run.dir={run}",
    ]
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "mamlpp.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy_mean"] - results["test_accuracy_ci95"] > 0.3, results
    state = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert "net.module.classifier.weight" in state["learner"]
    assert "exp_avg" in str(state["optimizer"]["state"][0].keys())  # AdamW's state


@pytest.mark.slow
def test_readme_bring_your_own_model_example(omniglot_source_dir, tmp_path) -> None:
    """README's example as printed: save the module in a folder of its own and run the command
    block there with bash, its MAMLPP pointing at a checkout (a venv and datasets/omniglot)."""
    import subprocess

    readme = (REPO_ROOT / "README.md").read_text()
    module = readme.split("<!-- byo-model -->")[1].split("```python\n")[1].split("```")[0]
    command = readme.split("<!-- byo-command -->")[1].split("```bash\n")[1].split("```")[0]
    checkout, user = tmp_path / "checkout", tmp_path / "user"
    (checkout / "datasets" / "omniglot").mkdir(parents=True)
    os.symlink(sys.prefix, checkout / ".venv")
    for name in ("images_background.zip", "images_evaluation.zip"):
        os.symlink(omniglot_source_dir / name, checkout / "datasets" / "omniglot" / name)
    user.mkdir()
    (user / "my_nets.py").write_text(module)
    first = command.splitlines()[0]
    assert first.startswith("MAMLPP=~/mamlpp ")  # the one line a reader edits
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMLPP")}
    done = subprocess.run(
        ["bash", "-c", command.replace("~/mamlpp", str(checkout), 1)],
        cwd=user,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (results,) = (checkout / "runs" / "smoke").glob("*/results.json")
    assert "model._target_=my_nets.TinyNet" in results.parent.name
    assert "model.kwargs.width=32" in results.parent.name
    assert json.loads(results.read_text())["num_test_tasks"] == 40
    assert sorted(p.name for p in user.iterdir() if p.name != "__pycache__") == ["my_nets.py"]


def test_checkpoints_from_before_the_new_keys_still_resume() -> None:
    """A checkpoint written before model._target_/kwargs and optimizer.* existed lacks them;
    they count as their defaults (what that code built in), while a real change is named."""
    from mamlpp.config import experiment_keys
    from mamlpp.experiment.run_state import config_diffs

    cfg = Config()
    old = {k: v for k, v in experiment_keys(cfg).items() if not k.startswith("optimizer.")}
    old.pop("model._target_")
    assert config_diffs(old, cfg) == ""
    cfg.optimizer = OptimizerConfig("torch.optim.SGD")
    assert "optimizer._target_: 'torch.optim.Adam' -> 'torch.optim.SGD'" in config_diffs(old, cfg)


def test_a_built_backbone_can_be_handed_to_the_learner(make_batch) -> None:
    """Python users may pass a network meeting the contract instead of a config; what it
    declares it cannot do (per-step batch norm) is refused in one line."""
    from user_nets import SmallCNN

    from mamlpp.nn.module_backbone import ModuleBackbone

    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="model.head.*example images"):
        ModuleBackbone(SmallCNN(1, 5, width=6))
    net = ModuleBackbone(SmallCNN(1, 5, width=6), example=torch.zeros(5, 1, 12, 12))
    assert net.head_names == {"module.classifier.weight", "module.classifier.bias"}
    learner = MetaLearner(AlgorithmConfig(name="maml", inner_steps=2), net, 1, 12, 5, 10)
    assert learner.net is net
    step = learner.train_step(make_batch(tasks=2, image_size=12), 0, 0)
    assert 0.0 <= step.accuracy <= 1.0
    with pytest.raises(ConfigError, match="algorithm.per_step_bn_weights.*supports_per_step_bn"):
        MetaLearner(AlgorithmConfig(per_step_bn_weights=True), net, 1, 12, 5, 10)


def test_constructor_arguments_have_one_spelling() -> None:
    """`+model.width=32` is `+model.kwargs.width=32`: same config, same run directory."""
    import mamlpp

    base = ("experiment=smoke", "algorithm=maml", "model=module")
    base += ("model._target_=user_nets.SmallCNN",)
    flat = mamlpp.compose(*base, "+model.width=32")
    nested = mamlpp.compose(*base, "+model.kwargs.width=32")
    assert flat.model.kwargs == nested.model.kwargs == {"width": 32}
    assert flat.run.dir == nested.run.dir
    assert flat.run.dir.endswith("model.kwargs.width=32,model=module")
    with pytest.raises(ConfigError, match="model.width"):
        mamlpp.compose("experiment=smoke", "+model.width=32")  # conv4 takes no such key


@pytest.mark.parametrize("adapt", ["head", "body"])
def test_the_head_is_found_by_the_forward_pass(adapt: str) -> None:
    """ClassifierFirst registers its classifier before a hidden Linear with `ways` outputs:
    registration order would make the hidden layer the head."""
    learner = module_learner(target="ClassifierFirst", adapt=adapt)
    head = {"module.classifier.weight", "module.classifier.bias"}
    assert learner.net.head_names == head
    if adapt == "head":  # ANIL adapts the classifier only
        assert set(learner.adapted_names) == head
    else:  # BOIL keeps the classifier fixed and adapts the hidden layer
        assert not head & set(learner.adapted_names)
        assert "module.hidden.weight" in learner.adapted_names


def test_an_ambiguous_head_is_refused_until_named() -> None:
    with pytest.raises(ConfigError, match="cannot tell its head.*model.head=<") as err:
        module_learner(target="ScaledLogits", adapt="head")
    assert "\n" not in str(err.value) and "hidden" in str(err.value)
    named = module_learner(target="ScaledLogits", model_keys={"head": "hidden"}, adapt="head")
    assert named.adapted_names == ["module.hidden.weight", "module.hidden.bias"]
    with pytest.raises(ConfigError, match="model.head.*'hiden'.*classifier, hidden"):
        module_learner(target="ScaledLogits", model_keys={"head": "hiden"})


@pytest.mark.parametrize(
    ("target", "message"),
    [
        # No Linear and 7 outputs for 5 ways: trained to 0% with rc 0 before.
        ("WrongWidth", r"'user_nets.WrongWidth'.*\(5, 7\).*task.ways=5 needs \(5, 5\)"),
        ("NotLogits", r"'user_nets.NotLogits'.*returns a tuple.*logits \(5, N\) expected"),
    ],
)
def test_a_forward_that_does_not_return_logits_is_one_line(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        module_learner(target=target)
    assert "\n" not in str(err.value)


def test_logits_of_the_wrong_shape_during_training_are_one_line(make_batch) -> None:
    """FirstRowsOnly passes the check on `ways` images and fails on a larger support set."""
    from mamlpp.errors import MamlppError

    learner = module_learner(target="FirstRowsOnly")
    with pytest.raises(MamlppError, match=r"FirstRowsOnly.*returned shape \(5, 5\).*\(6, 5\)"):
        learner.train_step(make_batch(tasks=2, image_size=12), 0, 0)


def test_dropout_under_vmap_is_one_line(make_batch) -> None:
    with pytest.raises(ConfigError, match=r"model.vectorize.*\(drop\).*model.vectorize=false"):
        module_learner(target="Dropout")
    batch = make_batch(tasks=2, image_size=12)
    looped = module_learner(vectorize=False, target="Dropout")
    assert 0 <= looped.train_step(batch, 0, 0).accuracy <= 1
    # Dropout through torch.nn.functional shows only in a training forward.
    functional = module_learner(target="FunctionalDropout")
    with pytest.raises(ConfigError, match="vmap randomness.*model.vectorize=false") as err:
        functional.train_step(batch, 0, 0)
    assert "\n" not in str(err.value)


EVERY_NORM = {
    "batch_norm": {"norms.batch.weight", "norms.batch.bias"},
    "instance_norm": {"norms.instance.weight", "norms.instance.bias"},
    "group_norm": {"norms.group.weight", "norms.group.bias"},
    "layer_norm": {"layer.weight", "layer.bias"},
    "rms_norm": {"rms.weight"},
    "MyNorm": {"norms.mine.scale"},
}


@pytest.mark.parametrize(
    "norm_layers",
    [None, ["group_norm", "MyNorm"], []],
    ids=["default", "chosen", "none"],
)
def test_one_rule_for_normalisation_layers(norm_layers: list[str] | None) -> None:
    """model.norm_layers covers every torch.nn kind by default (batch, instance, group, layer
    and RMS norm) and the user's own classes by name: their weights are shared by the tasks
    and adapted only with inner_adapt_bn."""
    keys = {} if norm_layers is None else {"norm_layers": norm_layers}
    learner = module_learner(target="EveryNorm", model_keys=keys)
    chosen = [k for k in EVERY_NORM if k != "MyNorm"] if norm_layers is None else norm_layers
    expected = {f"module.{p}" for k in chosen for p in EVERY_NORM[k]}
    assert learner.net.norm_names == expected
    assert not expected & set(learner.fast_names)
    assert "module.conv.weight" in learner.fast_names
    every = {f"module.{p}" for names in EVERY_NORM.values() for p in names}
    assert every - expected <= set(learner.fast_names)
    adapt_all = module_learner(target="EveryNorm", model_keys=keys, inner_adapt_bn=True)
    assert every <= set(adapt_all.fast_names)
    # Running statistics (batch norm, tracked instance norm) are dropped for batch statistics.
    assert not any("running" in n for n, _ in learner.named_buffers())


def test_every_norm_kind_runs_under_vmap_as_in_the_loop(make_batch) -> None:
    batch = make_batch(tasks=3, seed=2, image_size=12, dtype=torch.float64)
    batched = grads(module_learner(target="EveryNorm").double(), batch)
    looped = grads(module_learner(vectorize=False, target="EveryNorm").double(), batch)
    assert batched.keys() == looped.keys()
    # Batched and per-task norm kernels sum in other orders: float64 rounding, ~1e-11.
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-8, atol=1e-10)


def test_norm_layers_are_checked() -> None:
    model = model_config(name="module", _target_="user_nets.SmallCNN", norm_layers=["batch-norm"])
    with pytest.raises(ConfigError, match="model.norm_layers.*batch_norm, instance_norm"):
        validate(Config(model=model, algorithm=AlgorithmConfig(name="maml")))

"""The agent as an in-context learner: AgentLearner, the temperature schedule, agent:PATH specs, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anymdp_agent import AnyMDPAgentConfig, AnyMDPAgentModel
from anymdp_agent.baselines.protocol import Transition
from anymdp_agent.cli import main
from anymdp_agent.evaluation import EvalConfig, build_learner, check_config, load_suite, run_learner, suite_spec
from anymdp_agent.rollout import AgentLearner, parse_agent_spec


def tiny_model(backbone: str = "planning", num_observations: int = 16, num_actions: int = 5, seed: int = 0,
               **overrides):
    torch.manual_seed(seed)
    cfg = AnyMDPAgentConfig(num_observations=num_observations, num_actions=num_actions, hidden_size=16, num_heads=2,
                            num_hidden_layers=1, chunk_size=8, planning_steps=6, backbone=backbone, **overrides)
    return AnyMDPAgentModel(cfg).eval()


@pytest.fixture(scope="module")
def anymdp16():
    return load_suite("anymdp-16", 8)


@pytest.fixture(scope="module")
def saved_agent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agent") / "tiny"
    tiny_model("planning").save_pretrained(folder)
    return folder


def _same_run(a, b):
    return (np.array_equal(a.env_index, b.env_index) and np.array_equal(a.start, b.start)
            and np.array_equal(a.length, b.length) and np.array_equal(a.ret, b.ret))


def _prefix(run, steps):
    """The episodes of ``run`` that ended within its first ``steps`` steps (fixed by those steps alone)."""
    keep = run.start + run.length <= steps
    order = np.lexsort((run.start[keep], run.env_index[keep]))
    return [x[keep][order] for x in (run.env_index, run.start, run.length, run.ret)]


@pytest.mark.slow
def test_untrained_planning_agent_runs_and_is_deterministic(anymdp16):
    learner = AgentLearner(tiny_model("planning"), decay_steps=300)
    run = run_learner(learner, anymdp16, steps=600, seed=0)
    assert run.learner == "agent" and run.num_envs == 8 and run.steps == 600
    assert len(run.ret) > 8 and np.isfinite(run.ret).all()
    assert set(np.unique(run.env_index)) <= set(range(8))
    assert (run.length >= 1).all() and (run.start + run.length <= 600).all()
    # A second run with the same seed repeats every episode (checked on the first 200 steps, which
    # alone decide the episodes ending there); another seed does not.
    again = run_learner(learner, anymdp16, steps=200, seed=0)
    assert len(again.ret) > 0
    for x, y in zip(_prefix(run, 200), _prefix(again, 200)):
        assert np.array_equal(x, y)
    other = run_learner(learner, anymdp16, steps=200, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(_prefix(run, 200), _prefix(other, 200)))


def test_sequence_agent_runs(anymdp16):
    learner = AgentLearner(tiny_model("sequence"), decay_steps=100)
    run = run_learner(learner, anymdp16, steps=150, seed=0)
    assert len(run.ret) > 0 and np.isfinite(run.ret).all()
    assert _same_run(run, run_learner(learner, anymdp16, steps=150, seed=0))


def test_agent_learner_on_frozenlake():
    suite = load_suite("frozenlake", 2)  # 16 observations, 4 actions: the model's 5th action is masked
    learner = AgentLearner(tiny_model("planning", num_observations=16, num_actions=5))
    run = run_learner(learner, suite, steps=200, seed=0)
    assert run.num_envs == 2 and len(run.ret) > 0
    assert set(np.unique(run.ret)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="observations"):
        run_learner(AgentLearner(tiny_model("planning", num_observations=8, num_actions=4)), suite, steps=5)


def test_agent_learner_never_takes_a_masked_action():
    suite = load_suite("frozenlake", 2)
    learner = AgentLearner(tiny_model("planning", num_observations=16, num_actions=5), temperature_end=50.0,
                           temperature_start=50.0)
    envs = suite.make_env()
    try:
        state = learner.initial_state(suite_spec(suite, envs), seed=0)
        obs, _ = envs.reset(seed=0)
        for _ in range(40):
            actions, state = learner.act(state, np.asarray(obs))
            assert (actions < 4).all()
            next_obs, rew, term, trunc, _ = envs.step(actions)
            state = learner.observe(state, Transition(obs, actions, rew, next_obs, term, trunc))
            obs = next_obs
    finally:
        envs.close()


# ---------------------------------------------------------------------- temperature schedule


def test_temperature_decays_from_start_to_end():
    learner = AgentLearner(tiny_model(), temperature_start=1.0, temperature_end=0.1, decay_steps=1000)
    steps = np.array([0, 250, 500, 1000, 5000])
    temp = learner.temperature(steps)
    assert temp[0] == pytest.approx(1.0)
    assert temp[2] == pytest.approx(np.sqrt(0.1))  # exponential: the geometric mean half-way
    assert temp[3] == pytest.approx(0.1) and temp[4] == pytest.approx(0.1)
    assert np.all(np.diff(temp) <= 1e-12)
    greedy_end = AgentLearner(tiny_model(), temperature_start=1.0, temperature_end=0.0, decay_steps=100)
    assert greedy_end.temperature(np.array([0, 50, 100, 200])) == pytest.approx([1.0, 0.5, 0.0, 0.0])
    no_decay = AgentLearner(tiny_model(), temperature_start=1.0, temperature_end=0.3, decay_steps=0)
    assert no_decay.temperature(np.array([0, 10])) == pytest.approx([0.3, 0.3])
    default = AgentLearner(tiny_model())
    assert (default.temperature_start, default.temperature_end, default.decay_steps) == (1.0, 0.1, 10_000)


@pytest.mark.parametrize("kwargs", [dict(temperature_start=-1.0), dict(temperature_end=-0.1), dict(decay_steps=-5)])
def test_agent_learner_rejects_negative_settings(kwargs):
    with pytest.raises(ValueError, match="temperatures and decay_steps"):
        AgentLearner(tiny_model(), **kwargs)


def test_per_environment_step_counts_drive_the_temperature(anymdp16):
    learner = AgentLearner(tiny_model(), temperature_start=1.0, temperature_end=0.1, decay_steps=10)
    envs = anymdp16.make_env()
    try:
        from anymdp_agent.baselines.protocol import Transition
        state = learner.initial_state(suite_spec(anymdp16, envs), seed=0)
        obs, _ = envs.reset(seed=0)
        for _ in range(4):
            actions, state = learner.act(state, np.asarray(obs))
            next_obs, rew, term, trunc, _ = envs.step(actions)
            state = learner.observe(state, Transition(obs, actions, rew, next_obs, term, trunc))
            obs = next_obs
        assert (state.steps == 4).all()
        assert learner.temperature(state.steps) == pytest.approx(np.full(8, 0.1 ** 0.4))
    finally:
        envs.close()


# ---------------------------------------------------------------------- agent:PATH specs


def test_agent_spec_with_options(saved_agent):
    learner = parse_agent_spec(f"agent:{saved_agent}:temperature_start=0.5:temperature_end=0.05:decay_steps=123")
    assert isinstance(learner, AgentLearner)
    assert (learner.temperature_start, learner.temperature_end, learner.decay_steps) == (0.5, 0.05, 123)
    hp = learner.hyperparameters()
    assert hp["checkpoint"] == str(saved_agent) and hp["backbone"] == "planning" and hp["parameters"] > 0
    built = build_learner(f"agent:{saved_agent}:decay_steps=7:device=cpu")
    assert isinstance(built, AgentLearner) and built.decay_steps == 7
    assert build_learner(f"agent:{saved_agent}", dry_run=True) is None
    check_config(EvalConfig(suite="anymdp-16", learners=[f"agent:{saved_agent}", "random"], tasks=2, steps=10))


def test_agent_spec_without_a_path_is_the_bundled_agent():
    from anymdp_agent.rollout import bundled_agent_path

    for spec in ("agent", "agent:"):
        learner = build_learner(spec)
        assert isinstance(learner, AgentLearner) and learner.checkpoint == str(bundled_agent_path())
    tuned = build_learner("agent:decay_steps=5:temperature_end=0.2")
    assert tuned.checkpoint == str(bundled_agent_path())
    assert (tuned.decay_steps, tuned.temperature_end) == (5, 0.2)


def test_agent_spec_reaches_a_bundled_checkpoint_by_name():
    from anymdp_agent.rollout import DEFAULT_AGENT, bundled_agent_names, bundled_agent_path

    assert DEFAULT_AGENT in bundled_agent_names()
    for name in bundled_agent_names():
        learner = build_learner(f"agent:{name}:temperature_end=0.2")
        assert learner.checkpoint == str(bundled_agent_path(name)) and learner.temperature_end == 0.2


@pytest.mark.parametrize("spec, match", [
    ("agent:{path}:colour=red", "unknown option 'colour=red'"),
    ("agent:{path}:decay_steps", "unknown option 'decay_steps'"),
    ("agent:{path}:temperature_end=inf", "finite"),
    ("agent:{path}:temperature_start=nan", "temperature"),
])
def test_bad_agent_specs(saved_agent, spec, match):
    with pytest.raises(ValueError, match=match):
        build_learner(spec.format(path=saved_agent))


def test_agent_spec_with_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_learner(f"agent:{tmp_path / 'none'}")


@pytest.mark.slow
def test_cli_eval_with_an_agent_checkpoint(saved_agent, tmp_path, capsys):
    out = tmp_path / "res"
    spec = f"agent:{saved_agent}"
    assert main(["eval", "--learners", f"{spec},random", "--suite", "anymdp-16", "--tasks", "2", "--steps", "200",
                 "--window", "100", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval-anymdp-16.json").read_text())
    assert list(result["learners"]) == [spec, "random"]
    entry = result["learners"][spec]
    assert entry["hyperparameters"]["backbone"] == "planning"
    assert entry["hyperparameters"]["checkpoint"] == str(saved_agent)
    assert len(entry["windows"]) == 2
    assert any(line.startswith("agent:") for line in printed.splitlines())


def test_cli_eval_with_a_bad_agent_spec(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--learners", "agent:decay_steps", "--tasks", "1", "--steps", "10", "--out", str(tmp_path),
              "--no-progress"])
    assert exc.value.code == 2
    assert "no checkpoint folder at decay_steps" in capsys.readouterr().err


# ---------------------------------------------------------------------- the checkpoint's own sampling schedule


@pytest.mark.parametrize("backbone", ["planning", "sequence"])
def test_act_without_a_temperature_follows_the_checkpoints_schedule(anymdp16, backbone):
    """``model.act(state, obs)`` samples as the config says, counting each history's environment steps (episode
    ends included): the same actions as passing that temperature explicitly, and greedy once it reaches 0."""
    model = tiny_model(backbone, num_observations=16, num_actions=5, temperature_start=2.0, temperature_end=0.0,
                       temperature_decay_steps=150)
    envs = anymdp16.make_env()
    try:
        obs, _ = envs.reset(seed=0)
        b = len(obs)
        implicit, explicit = model.initial_state(b, 16), model.initial_state(b, 16)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ended = 0
        for t in range(200):
            o = torch.as_tensor(np.asarray(obs))
            a1, logits, implicit = model.act(implicit, o, generator=g1)
            expected = max(0.0, 2.0 - 2.0 * t / 150)
            assert model.sampling_temperature(t).item() == pytest.approx(expected)
            a2, _, explicit = model.act(explicit, o, temperature=expected, generator=g2)
            assert torch.equal(a1, a2)
            if t >= 150:
                assert torch.equal(a1, logits.argmax(-1))
            nxt, rew, term, trunc, _ = envs.step(a1.numpy())
            ended += int((term | trunc).sum())
            step = (a1, torch.as_tensor(rew, dtype=torch.float32), torch.as_tensor(nxt), torch.as_tensor(term),
                    torch.as_tensor(trunc))
            implicit, explicit = model.observe(implicit, *step), model.observe(explicit, *step)
            obs = nxt
        assert ended > 0  # the step count survived episode ends
    finally:
        envs.close()


def test_agent_learner_takes_the_checkpoints_schedule_unless_told():
    model = tiny_model(temperature_start=0.5, temperature_end=0.2, temperature_decay_steps=300)
    own = AgentLearner(model)
    assert (own.temperature_start, own.temperature_end, own.decay_steps) == (0.5, 0.2, 300)
    np.testing.assert_allclose(own.temperature(np.array([0, 150, 300, 900])),
                               model.sampling_temperature(torch.tensor([0, 150, 300, 900])).numpy())
    told = AgentLearner(model, temperature_end=0.05)
    assert (told.temperature_start, told.temperature_end, told.decay_steps) == (0.5, 0.05, 300)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature_start=-1.0), "temperature_start must be a finite number >= 0"),
    (dict(temperature_end=float("nan")), "temperature_end must be a finite number >= 0"),
    (dict(temperature_decay_steps=2.5), "temperature_decay_steps must be an integer >= 0"),
    (dict(statistics_discount=1.0), "statistics_discount must lie in"),
])
def test_config_rejects_a_bad_sampling_schedule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnyMDPAgentConfig(**kwargs)


def test_a_bundle_being_built_is_no_bundled_checkpoint(tmp_path, monkeypatch):
    """``training/bundle.py`` builds under a hidden ``.<name>.tmp`` folder: it is not offered as a checkpoint."""
    import anymdp_agent.rollout as rollout

    for name in ("anymdp-agent-x", ".anymdp-agent-x.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    monkeypatch.setattr(rollout, "pretrained_dir", lambda: tmp_path)
    assert rollout.bundled_agent_names() == ["anymdp-agent-x"]


def test_agent_learner_takes_an_agent_loaded_with_its_own_code(anymdp16, tmp_path):
    """``AutoModel.from_pretrained(..., trust_remote_code=True)``, in a Python that has not used this package's classes,
    gives the checkpoint's own copy of the class, another class object (loaded here as transformers loads it): the
    wrapper takes it and runs it as it runs the package's class; anything else is a clear error."""
    import shutil

    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from anymdp_agent.rollout import bundled_agent_path

    folder = tmp_path / "agent"
    shutil.copytree(bundled_agent_path(), folder)
    remote_class = get_class_from_dynamic_module("modeling_anymdp_agent.AnyMDPAgentModel", str(folder))
    remote = remote_class.from_pretrained(folder)
    assert type(remote) is not AnyMDPAgentModel and type(remote).__name__ == "AnyMDPAgentModel"
    learner = AgentLearner(remote)
    assert learner.model is remote and learner.checkpoint is None
    assert _same_run(run_learner(learner, anymdp16, 300, seed=1),
                     run_learner(AgentLearner(str(folder)), anymdp16, 300, seed=1))
    with pytest.raises(TypeError, match="AgentLearner takes an AnyMDP agent"):
        AgentLearner(torch.nn.Linear(2, 2))

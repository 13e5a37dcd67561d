"""The batched in-context driver: any learner (the pretrained agent included) in any vector environment.

- :func:`run_in_context` steps a learner in a Gymnasium vector env (the package's
  :class:`~anymdp_agent.envs.BatchedAnyMDPEnv` or Gymnasium's own), episode after episode, and
  returns every finished episode's return; nothing about the learner is special-cased.
- :class:`AgentLearner` wraps a pretrained :class:`AnyMDPAgentModel` in the learner protocol: it
  learns from rewards in its recurrent state only (no weight updates), with a sampling
  temperature that decays over the first steps.
- :func:`load_agent` loads a checkpoint folder with clear errors.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .baselines.protocol import EnvSpec, InContextLearner, Transition
from .envs.vector_env import final_observations
from .hub import pretrained_dir
from .configuration_anymdp_agent import AnyMDPAgentConfig
from .modeling_anymdp_agent import AnyMDPAgentCache, AnyMDPAgentModel, WeightsDoNotMatchConfig, sampling_temperature


@dataclass
class Run:
    """Every finished episode of one learner in ``num_envs`` environments: arrays ``[E]`` over episodes."""

    learner: str
    env_index: np.ndarray
    start: np.ndarray
    length: np.ndarray
    ret: np.ndarray
    steps: int
    num_envs: int
    seconds: float



def run_in_context(learner: InContextLearner, envs, spec: EnvSpec, steps: int, seed: int = 0,
                   progress_label: str | None = None) -> Run:
    """Step ``learner`` in ``envs`` (a vector env with same-step autoreset) for ``steps`` steps.

    ``envs.reset(seed=seed)`` and ``learner.initial_state(spec, seed)`` start everything from
    scratch; each step is ``act`` -> ``envs.step`` -> ``observe``.
    """
    b = spec.num_envs
    state = learner.initial_state(spec, seed)
    obs, _ = envs.reset(seed=seed)
    obs = np.asarray(obs, dtype=np.int64)
    ep_return = np.zeros(b)
    ep_start = np.zeros(b, dtype=np.int64)
    rec_env, rec_start, rec_len, rec_ret = [], [], [], []
    bar = None
    if progress_label:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress_label, unit="step", leave=False, mininterval=0.5)
    t0 = time.perf_counter()
    for t in range(steps):
        actions, state = learner.act(state, obs)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        next_obs = np.asarray(next_obs, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        final = final_observations(next_obs, info, done)
        state = learner.observe(state, Transition(obs, np.asarray(actions), rewards, final, terminated, truncated))
        ep_return += rewards
        if done.any():
            idx = np.flatnonzero(done)
            rec_env.append(idx)
            rec_start.append(ep_start[idx].copy())
            rec_len.append(t + 1 - ep_start[idx])
            rec_ret.append(ep_return[idx].copy())
            ep_return[idx] = 0.0
            ep_start[idx] = t + 1
        obs = next_obs
        if bar is not None and (t + 1) % 100 == 0:
            bar.update(100)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return Run(learner=learner.name, env_index=cat(rec_env, np.int64), start=cat(rec_start, np.int64),
               length=cat(rec_len, np.int64), ret=cat(rec_ret, np.float64), steps=steps, num_envs=b, seconds=seconds)


# ---------------------------------------------------------------------- the pretrained agent

#: The checkpoint bundled with the package (``anymdp_agent/pretrained/<name>/``), the default agent: the
#: ``model_based`` backbone with a transition prior trained from a corpus (``anymdp_agent.training.transition_prior``).
DEFAULT_AGENT = "anymdp-agent-model-based-cpu"
#: The bundled agent of return-driven meta-training (two stages, ``training/meta_rl.py``); not the default: on the
#: test suites it is below the default on AnyMDP-16 and FrozenLake (its card has the numbers).
META_AGENT = "anymdp-agent-meta-cpu"
#: The bundled agent with the generic ``sequence`` backbone (the paper's route at CPU scale).
SEQUENCE_AGENT = "anymdp-agent-sequence-cpu"


def bundled_agent_path(name: str = DEFAULT_AGENT) -> Path:
    """Folder of a checkpoint shipped inside the package (loadable offline with ``from_pretrained``)."""
    path = pretrained_dir().resolve() / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no bundled agent {name!r} in {path.parent}: this installation ships none; "
                                "pass a checkpoint folder (agent:PATH)")
    return path


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has, or a clear ``ValueError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e}): use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device (or torch was built without CUDA); "
                         "use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use device=cpu")
    return dev


def check_checkpoint_folder(path: str | os.PathLike) -> Path:
    """The cheap checks of a checkpoint folder (it exists, a JSON ``config.json``, ``*.safetensors``), clear errors."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}: pass a folder written by save_pretrained")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a checkpoint folder (save_pretrained writes one)")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights: the checkpoint is incomplete")
    try:
        json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON ({e}): the checkpoint is corrupt; "
                         "re-save it with save_pretrained") from None
    return folder


def load_agent(path: str | os.PathLike, device: str | torch.device = "cpu") -> AnyMDPAgentModel:
    """Load a checkpoint folder (``config.json`` + ``model.safetensors``) with clear errors."""
    folder = check_checkpoint_folder(path)
    device = check_device(device)
    try:
        config = AnyMDPAgentConfig.from_pretrained(folder)
    except (ValueError, OSError, TypeError) as e:
        raise ValueError(f"{folder}/config.json is not a valid AnyMDPAgentConfig: {e}") from e
    from safetensors import SafetensorError

    try:  # from_pretrained itself refuses weights that do not cover the config (WeightsDoNotMatchConfig)
        model = AnyMDPAgentModel.from_pretrained(folder, config=config)
    except WeightsDoNotMatchConfig:
        raise
    except SafetensorError as e:
        raise ValueError(f"the weights in {folder} are corrupt or truncated ({e}): re-save or re-download "
                         "the checkpoint") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"the weights in {folder} do not match its config.json ({type(e).__name__}: {e}); "
                         "the checkpoint was written by another configuration: re-save it") from e
    return model.to(device).eval()


def is_agent_model(model) -> bool:
    """Whether ``model`` is an AnyMDP agent: this package's :class:`AnyMDPAgentModel`, or the same class loaded from a
    checkpoint's own code (``AutoModel.from_pretrained(..., trust_remote_code=True)``), which is another class object
    of the same code."""
    if isinstance(model, AnyMDPAgentModel):
        return True
    return isinstance(model, torch.nn.Module) and type(model).__name__ == AnyMDPAgentModel.__name__ \
        and getattr(getattr(model, "config", None), "model_type", None) == AnyMDPAgentConfig.model_type


@dataclass
class _AgentState:
    cache: AnyMDPAgentCache
    mask: torch.Tensor        # [B, num_actions] bool
    steps: np.ndarray         # [B] environment steps taken (temperature schedule)
    generator: torch.Generator


class AgentLearner(InContextLearner):
    """The pretrained agent in the learner protocol: learns in context, never updates its weights.

    Sampling temperature per environment decays exponentially from ``temperature_start`` to
    ``temperature_end`` over ``decay_steps`` environment steps, then stays; ``temperature_end = 0`` means
    greedy after the decay. Each left ``None`` is the checkpoint's own setting (its config's
    ``temperature_start``, ``temperature_end``, ``temperature_decay_steps``: by default 1.0 -> 0.1 over
    10^4 steps, the reference schedule), so the wrapper samples as the model's own ``act`` does.
    """

    name = "agent"

    def __init__(self, model: AnyMDPAgentModel | str | os.PathLike, temperature_start: float | None = None,
                 temperature_end: float | None = None, decay_steps: int | None = None, device: str = "cpu"):
        given = [x for x in (temperature_start, temperature_end, decay_steps) if x is not None]
        if not all(math.isfinite(x) and x >= 0 for x in given):
            raise ValueError(f"temperatures and decay_steps must be finite and >= 0, got temperature_start="
                             f"{temperature_start}, temperature_end={temperature_end}, decay_steps={decay_steps}")
        loaded = is_agent_model(model)
        if not loaded and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"AgentLearner takes an AnyMDP agent (AnyMDPAgentModel, or one loaded with "
                            f"AutoModel.from_pretrained(..., trust_remote_code=True)) or its checkpoint folder, got "
                            f"{type(model).__name__}")
        self.checkpoint = None if loaded else str(model)
        self._model = model if loaded else load_agent(model, device)
        self._model.eval()
        cfg = self._model.config
        self.temperature_start = float(cfg.temperature_start if temperature_start is None else temperature_start)
        self.temperature_end = float(cfg.temperature_end if temperature_end is None else temperature_end)
        self.decay_steps = int(cfg.temperature_decay_steps if decay_steps is None else decay_steps)

    @property
    def model(self) -> AnyMDPAgentModel:
        return self._model

    def temperature(self, steps: np.ndarray) -> np.ndarray:
        """The sampling temperature after ``steps`` environment steps."""
        return sampling_temperature(self.temperature_start, self.temperature_end, self.decay_steps,
                                    np.asarray(steps)).numpy()

    def check_spec(self, spec: EnvSpec) -> None:
        if self._model.size_free:  # the model_based backbone: a state of any size (AnyMDPAgentModel.size_free)
            return
        cfg = self._model.config
        if spec.n_actions > cfg.num_actions:
            raise ValueError(f"the environments have {spec.n_actions} actions but the agent knows {cfg.num_actions}: "
                             "use an agent trained with more actions, or a model_based one (any number)")
        if spec.n_observations > cfg.num_observations:
            raise ValueError(f"the environments have {spec.n_observations} observations but the agent's vocabulary "
                             f"holds {cfg.num_observations}: use an agent with a larger vocabulary, or a model_based "
                             "one (any number)")

    def initial_state(self, spec: EnvSpec, seed: int) -> _AgentState:
        cfg = self._model.config
        self.check_spec(spec)
        # the config's actions, the ones a task lacks masked; a size-free state grows to a task with more
        n_actions = max(cfg.num_actions, spec.n_actions) if self._model.size_free else cfg.num_actions
        mask = np.zeros((spec.num_envs, n_actions), dtype=bool)
        mask[:, :spec.n_actions] = spec.action_mask
        device = self._model.device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        cache = self._model.initial_state(spec.num_envs, num_observations=spec.n_observations, device=device,
                                          num_actions=n_actions)
        return _AgentState(cache=cache, mask=torch.as_tensor(mask, device=device),
                           steps=np.zeros(spec.num_envs, dtype=np.int64), generator=gen)

    def act(self, state: _AgentState, obs: np.ndarray):
        device = self._model.device
        temp = torch.as_tensor(self.temperature(state.steps), dtype=torch.float32, device=device)
        actions, _, state.cache = self._model.act(state.cache, torch.as_tensor(obs, device=device),
                                                  action_mask=state.mask, temperature=temp, generator=state.generator)
        return actions.cpu().numpy(), state

    def observe(self, state: _AgentState, t: Transition) -> _AgentState:
        device = self._model.device
        as_t = lambda x, dtype: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)  # noqa: E731
        state.cache = self._model.observe(state.cache, as_t(t.actions, torch.long), as_t(t.rewards, torch.float32),
                                          as_t(t.next_obs, torch.long), as_t(t.terminated, torch.bool),
                                          as_t(t.truncated, torch.bool), action_mask=state.mask)
        state.steps += 1
        return state

    def hyperparameters(self) -> dict:
        cfg = self._model.config
        return {"checkpoint": self.checkpoint, "backbone": cfg.backbone,
                "parameters": int(sum(p.numel() for p in self._model.parameters())),
                "temperature_start": self.temperature_start, "temperature_end": self.temperature_end,
                "decay_steps": self.decay_steps}


def bundled_agent_names() -> list[str]:
    """Names of the checkpoints shipped inside the package (``agent:<name>`` reaches each); a folder being built
    (a hidden ``.<name>.tmp`` of ``training/bundle.py``) is none."""
    return sorted(p.name for p in pretrained_dir().glob("*") if (p / "config.json").is_file()
                  and not p.name.startswith("."))


def parse_agent_spec(spec: str, load: bool = True) -> AgentLearner | None:
    """``agent`` (the bundled agent), ``agent:NAME`` (a bundled checkpoint by name, see
    :func:`bundled_agent_names`), ``agent:PATH`` or ``agent:PATH:temperature_end=0.1:decay_steps=2000``.
    A folder of that name in the working directory wins over a bundled checkpoint.

    With ``load=False`` only the spec is checked (options, device, that the folder is a checkpoint), cheaply
    and before any work; loading checks the weights.
    """
    _, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if not parts or "=" in parts[0]:
        parts = [str(bundled_agent_path())] + parts
    if not parts[0]:
        raise ValueError(f"learner {spec!r}: name the checkpoint folder, as agent:PATH (or just agent)")
    if not Path(parts[0]).exists() and parts[0] in bundled_agent_names():
        parts[0] = str(bundled_agent_path(parts[0]))
    kwargs = {}
    for item in parts[1:]:
        key, eq, value = item.partition("=")
        if not eq or key not in ("temperature_start", "temperature_end", "decay_steps", "device"):
            raise ValueError(f"learner {spec!r}: unknown option {item!r} (temperature_start, temperature_end, "
                             "decay_steps, device)")
        try:
            kwargs[key] = value if key == "device" else (int(value) if key == "decay_steps" else float(value))
        except ValueError:
            raise ValueError(f"learner {spec!r}: {key} must be {'an integer' if key == 'decay_steps' else 'a number'}"
                             f", got {value!r}") from None
    check_device(kwargs.get("device", "cpu"))
    if not load:
        check_checkpoint_folder(parts[0])
        return None
    return AgentLearner(parts[0], **kwargs)

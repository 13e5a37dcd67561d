"""The in-context RL agent: a ``transformers`` model with a linear-time recurrent backbone.

Self-contained (imports only torch, transformers and the config file beside it): it travels with every
checkpoint, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works in a Python that has
never imported ``anymdp_agent``.

Data interface (``[B, T]`` rows, one row per environment step; two tokens per row):

- ``observations``: the observation id at the row; ``rewards``: the reward received *after* the row's
  action (0 on an episode-end row); ``actions``: the action taken, or :data:`END_TERMINATED` /
  :data:`END_TRUNCATED` on the extra row that closes an episode (its observation is the final one);
  ``tags`` (behaviour tag, ``UNKNOWN_TAG`` = unknown), ``prompts [B]``, ``labels`` (the target action,
  :data:`IGNORE_INDEX` where none). Ids may have any integer dtype; rewards must be finite. These ids
  are the corpus/model contract, defined once in ``configuration_anymdp_agent``.
- observation token: observation + the reward received on arriving (0 at an episode start) + prompt;
  the **policy head** reads it. Action token: action + tag; the **world-model heads** read it and
  predict the next observation (cross-entropy) and the reward (squared error in units of the
  sequence's running reward scale).

Backbones (``config.backbone``), both with an explicit constant-size recurrent state
(:class:`AnyMDPAgentCache`) and one interface -- ``initial_cache``, ``state_observations``, ``forward``
(rows to policy logits, world-model outputs, reward scale and cache), ``begin_row`` / ``end_row``
(stepping) -- so the model has one path for either:

- ``planning``: exact per-(observation, action) statistics -- counts, reward sums, next-observation
  counts, terminal observations: a linear-attention state with one-hot keys and no decay, O(1) per
  step -- read by ``planning_steps`` differentiable value-iteration layers with a learned discount,
  a learned exploration bonus (a small network of the statistics), learned optimism for untried
  pairs and a learned temperature (optionally starting from the values of the previous chunk).
  Within a chunk the backups of all rows are dense matrix products against the chunk-start counts
  plus the chunk's own transitions (no per-row copy of the counts). With ``config.memory_decay`` the
  memory gets a learned forgetting rate (gated-linear-attention style); at its initial value of
  exactly 1 it is the exact statistics.
- ``sequence``: a stack of gated linear attention layers (scalar data-dependent decay per head, the
  Mamba-2 / gated-retention member of the GLA family: every decay factor in the chunkwise form is
  ``exp`` of a non-positive number, so it is stable in float32 at any chunk size) with a
  chunkwise-parallel form for training and a recurrent form for stepping, then the policy head on
  the observation tokens and the world-model heads on the action tokens.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_anymdp_agent import END_TERMINATED, END_TRUNCATED, IGNORE_INDEX, UNKNOWN_TAG, AnyMDPAgentConfig

#: No previous row (start of a history).
NO_ROW = -3


# ---------------------------------------------------------------------- the recurrent state


class AnyMDPAgentCache:
    """Recurrent state of ``B`` histories; its size does not depend on the history length.

    Holds named tensors with a leading batch axis. ``reset(mask)`` forgets the histories in
    ``mask`` (a new task in those slots) without touching the others; ``detach()`` cuts the graph
    between truncated back-propagation segments; ``index``/``clone`` copy.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], layers: list[torch.Tensor] | None = None):
        self.tensors = tensors
        self.layers = layers or []

    def __getattr__(self, name):
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    @property
    def batch_size(self) -> int:
        return int(self.tensors["step"].shape[0])

    def _map(self, fn) -> "AnyMDPAgentCache":
        return AnyMDPAgentCache({k: fn(v) for k, v in self.tensors.items()}, [fn(x) for x in self.layers])

    def detach(self) -> "AnyMDPAgentCache":
        return self._map(lambda t: t.detach())

    def clone(self) -> "AnyMDPAgentCache":
        return self._map(lambda t: t.clone())

    def index(self, idx) -> "AnyMDPAgentCache":
        return self._map(lambda t: t[idx])

    def to(self, device) -> "AnyMDPAgentCache":
        return self._map(lambda t: t.to(device))

    def reset(self, mask: torch.Tensor, fresh: "AnyMDPAgentCache") -> "AnyMDPAgentCache":
        """Histories in ``mask [B]`` replaced by ``fresh`` (an initial state of the same shapes)."""
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.tensors["step"].device)

        def pick(new, old):
            return torch.where(m.view(-1, *([1] * (old.dim() - 1))), new, old)

        return AnyMDPAgentCache({k: pick(fresh.tensors[k], v) for k, v in self.tensors.items()},
                                [pick(f, x) for f, x in zip(fresh.layers, self.layers)])


@dataclass
class AnyMDPAgentOutput(ModelOutput):
    """Output of :class:`AnyMDPAgentModel`; ``loss`` (and its parts) when labels are given."""

    loss: torch.FloatTensor | None = None
    policy_loss: torch.FloatTensor | None = None
    observation_loss: torch.FloatTensor | None = None
    reward_loss: torch.FloatTensor | None = None
    policy_logits: torch.FloatTensor | None = None
    observation_logits: torch.FloatTensor | None = None
    reward_prediction: torch.FloatTensor | None = None
    cache: AnyMDPAgentCache | None = None


# ---------------------------------------------------------------------- shared helpers


def previous_rows(observations, actions, rewards, cache: AnyMDPAgentCache):
    """The row before each row (from the cache for the first): its observation, action, reward."""
    prev_obs = torch.cat([cache.last_obs[:, None], observations[:, :-1]], 1)
    prev_act = torch.cat([cache.last_action[:, None], actions[:, :-1]], 1)
    prev_rew = torch.cat([cache.last_reward[:, None], rewards[:, :-1]], 1)
    return prev_obs, prev_act, prev_rew


def reward_statistics(cache: AnyMDPAgentCache, prev_rew: torch.Tensor, real: torch.Tensor):
    """Count and sum of squares of the rewards each row of a chunk has seen (``[B, C]``; ``real`` marks the
    rows whose previous row took an action). The sum of squares is float64: a float32 one overflows to inf
    from a single reward of 1.9e19, and every reward after it would be planned in units of infinity."""
    w = real.float()
    rr = (prev_rew * w).double()
    return cache.r_count[:, None] + w.cumsum(1), cache.r_sq[:, None] + (rr * rr).cumsum(1)


def reward_scale(r_sq: torch.Tensor, r_count: torch.Tensor) -> torch.Tensor:
    """Running root-mean-square reward of a history, shrunk towards 1 while few rewards are seen (float32;
    computed in float64, where any float32 reward's square fits)."""
    return torch.sqrt((r_sq.double() + 1.0) / (r_count.double() + 1.0)).float()


def initial_rows(batch: int, device) -> dict[str, torch.Tensor]:
    """The bookkeeping both backbones keep: rows seen and the last row (its action pending until observed)."""
    return {"step": torch.zeros(batch, dtype=torch.long, device=device),
            "last_obs": torch.full((batch,), NO_ROW, dtype=torch.long, device=device),
            "last_action": torch.full((batch,), NO_ROW, dtype=torch.long, device=device),
            "last_reward": torch.zeros(batch, device=device)}


def after_rows(cache: AnyMDPAgentCache, observations, actions, rewards) -> dict[str, torch.Tensor]:
    """The bookkeeping after ``[B, C]`` rows: the step count and the last of them."""
    return {"step": cache.step + observations.shape[1], "last_obs": observations[:, -1],
            "last_action": actions[:, -1], "last_reward": rewards[:, -1]}


def with_action(cache: AnyMDPAgentCache, actions, rewards) -> dict[str, torch.Tensor]:
    """The cache's tensors with the current row's action and reward filled in (``end_row``'s bookkeeping)."""
    return {**cache.tensors, "last_action": actions.clone(), "last_reward": rewards.float().view(-1).clone()}


def sampling_temperature(start: float, end: float, decay_steps: int, steps) -> torch.Tensor:
    """Sampling temperature after ``steps`` environment steps (float64, the shape of ``steps``): ``start``
    falling to ``end`` over ``decay_steps`` steps, exponentially (linearly when either end is 0), then ``end``."""
    steps = torch.as_tensor(steps, dtype=torch.float64)
    start, end, decay_steps = float(start), float(end), int(decay_steps)
    if decay_steps == 0:
        return torch.full_like(steps, end)
    frac = (steps / decay_steps).clamp(max=1.0)
    if start > 0 and end > 0:
        return start * (end / start) ** frac
    return start + (end - start) * frac


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


# ---------------------------------------------------------------------- planning backbone


class InContextPlanner(nn.Module):
    """Statistics memory + learned differentiable value iteration (the ``planning`` backbone).

    All learned quantities are few and interpretable: discount, temperature, optimism for untried
    pairs, an exploration bonus network over count/reward features, the smoothing of the world-model
    predictions and, with ``config.memory_decay``, the memory's forgetting rate. Untrained, it is the
    count-based optimistic planner.

    Chunked form (training and stepping alike; a step is a chunk of one row): row ``j`` of a chunk
    sees the chunk-start memory ``N0`` (the cache) plus the chunk's transitions ``i <= j``. Nothing of
    size ``[rows, S*A*S]`` is built: a Bellman backup of all rows of a chunk is one dense product
    ``V [C, S] @ N0^T [S, S*A]`` plus the in-chunk correction ``(W * V[:, s'_i]) [C, C] @ onehot(sa_i) [C, S*A]``,
    where ``W[j, i]`` is the weight with which row ``j`` counts transition ``i`` (1 for ``i <= j`` when the
    memory does not decay; ``decay^(j-i)`` when it does, and ``N0`` then enters row ``j`` times
    ``decay^(j+1)``, as in gated linear attention).
    """

    NUM_FEATURES = 6
    #: Summary features of the whole history read by the context head (see :meth:`context_features`).
    NUM_CONTEXT = 6
    #: What the context head adjusts per row: discount logit, optimism scale (log-like), extra optimism for
    #: untried pairs (in normalised reward units), log temperature.
    NUM_ADJUST = 4
    MIN_COUNT = 1e-3

    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__()
        self.config = config
        self.steps = config.planning_steps
        self.gamma_logit = nn.Parameter(torch.zeros(()))
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.optimism = nn.Parameter(torch.zeros(2))  # scale of r_max (softplus) and offset
        self.bonus_in = nn.Linear(self.NUM_FEATURES, config.bonus_hidden)
        self.bonus_out = nn.Linear(config.bonus_hidden, 1)
        self.world_smoothing = nn.Parameter(torch.zeros(2))  # log alpha (next obs), log beta (reward)
        if config.memory_decay:
            self.memory_log_decay = nn.Parameter(torch.zeros(()))  # 0: decay exactly 1, the exact statistics
        if config.context_adaptation:
            # Zero-initialised: the adjustments start at 0, i.e. the fixed discount/optimism/temperature above.
            self.context = nn.Linear(self.NUM_CONTEXT, self.NUM_ADJUST)

    # -- state ---------------------------------------------------------------------------------
    def initial_cache(self, batch: int, n_obs: int, device) -> AnyMDPAgentCache:
        """A fresh state: statistics for the first ``n_obs`` observation ids."""
        a = self.config.num_actions
        z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        return AnyMDPAgentCache({
            **initial_rows(batch, device),
            "n_sa": z(batch, n_obs, a), "r_sum": z(batch, n_obs, a), "n_ss": z(batch, n_obs, a, n_obs),
            "terminal": z(batch, n_obs), "r_count": z(batch), "r_sq": z(batch).double(), "r_max": z(batch),
            "r_nonzero": z(batch), "episodes": z(batch), "values": z(batch, n_obs), "anchor": z(batch, n_obs)})

    @staticmethod
    def state_observations(cache: AnyMDPAgentCache) -> int:
        """Observation ids the state holds statistics for (``initial_state(num_observations=...)``)."""
        return int(cache.n_sa.shape[1])

    @property
    def gamma(self) -> torch.Tensor:
        return torch.sigmoid(self.gamma_logit)

    def log_decay(self) -> torch.Tensor | None:
        """Log of the memory's per-row decay (``<= 0``), or ``None`` for exact statistics (no decay).

        The parameter is clamped at 0 with a straight-through gradient: at initialisation (0) the decay is
        exactly 1.0 -- the model *is* the exact-statistics planner -- and the gradient still says whether
        forgetting would help; a parameter pushed above 0 keeps the decay at 1 and can come back.
        """
        if not self.config.memory_decay:
            return None
        p = self.memory_log_decay
        return p - p.clamp(min=0.0).detach()

    # -- memory over a chunk --------------------------------------------------------------------
    def memory(self, cache, prev_obs, prev_act, prev_rew, observations):
        """What each row of a chunk knows: the cache plus the chunk's transitions ``i <= j``.

        Per row ``[B, C, ...]``: ``n_sa``, ``r_sum`` (``[S, A]``), ``terminal``, ``r_count``, ``r_sq``, ``scale`` (the
        running reward scale, :func:`reward_scale`), ``r_max``, ``r_nonzero`` (rewarded steps), ``episodes``;
        the chunk's transitions: ``sa`` (pair id), ``next_obs``, ``weight [B, C, C]`` (``W[j, i]``, zero for
        ``i > j`` and for rows without a real action), ``carry`` (``[C]`` factor of ``N0`` in row ``j``, or
        ``None`` without decay), ``n_ss0`` (``N0``, ``[B, S*A, S]``) and ``n_ss_end`` (the memory after the chunk).
        For a single row ``n_ss0`` is the memory after it and ``weight``, ``carry`` are ``None``.
        Only ``[S*A]``-sized rows are built per row; next-observation counts exist once per chunk.
        """
        b, c = observations.shape
        n = cache.n_sa.shape[1]
        a = self.config.num_actions
        dev = observations.device
        real = prev_act >= 0
        w = real.float()
        sa = prev_obs.clamp(min=0) * a + prev_act.clamp(min=0)
        hot_sa = torch.zeros(b, c, n * a, device=dev).scatter_(2, sa[..., None], w[..., None])
        n_sa0, r_sum0 = cache.n_sa.reshape(b, 1, n * a), cache.r_sum.reshape(b, 1, n * a)
        g = self.log_decay()
        if g is None:
            carry = None
            mix = torch.ones(c, c, device=dev).tril()
            n_sa = n_sa0 + hot_sa.cumsum(1)
            r_sum = r_sum0 + (hot_sa * prev_rew[..., None]).cumsum(1)
            end_factor = None
        else:
            idx = torch.arange(c, device=dev, dtype=torch.float32)
            lag = idx[:, None] - idx[None, :]
            # clamp before exp: the masked entries (i > j) must not overflow, or their zero gradient becomes nan
            mix = torch.where(lag >= 0, torch.exp(g * lag.clamp(min=0.0)), torch.zeros_like(lag))
            carry = torch.exp(g * (idx + 1.0))
            n_sa = carry[:, None] * n_sa0 + mix @ hot_sa
            r_sum = carry[:, None] * r_sum0 + mix @ (hot_sa * prev_rew[..., None])
            end_factor = carry[-1]
        weight = mix * w[:, None, :]  # [B, C, C]
        n_ss0 = cache.n_ss.reshape(b, n * a, n)
        start = n_ss0.reshape(b, -1) if end_factor is None else n_ss0.reshape(b, -1) * end_factor
        n_ss_end = start.scatter_add(1, sa * n + observations, weight[:, -1])
        ended = (prev_act == END_TERMINATED).float()
        hot_t = torch.zeros(b, c, n, device=dev).scatter_(2, prev_obs.clamp(min=0)[..., None], ended[..., None])
        terminal = (cache.terminal[:, None] + hot_t.cumsum(1)).clamp(max=1.0)
        r_count, r_sq = reward_statistics(cache, prev_rew, real)
        r_nonzero = cache.r_nonzero[:, None] + ((prev_rew != 0) & real).float().cumsum(1)
        episodes = cache.episodes[:, None] + ((prev_act == END_TERMINATED) | (prev_act == END_TRUNCATED)).float().cumsum(1)
        r_max = torch.maximum(cache.r_max[:, None],
                              torch.where(real, prev_rew, torch.full_like(prev_rew, -torch.inf)).cummax(1).values)
        mem = {"n_sa": n_sa.view(b, c, n, a), "r_sum": r_sum.view(b, c, n, a), "terminal": terminal,
               "r_count": r_count, "r_sq": r_sq, "scale": reward_scale(r_sq, r_count), "r_max": r_max,
               "r_nonzero": r_nonzero, "episodes": episodes, "sa": sa, "next_obs": observations,
               "weight": weight, "carry": carry, "n_ss0": n_ss0, "n_ss_end": n_ss_end.view(b, n, a, n)}
        if c == 1:  # one row (stepping): its memory is the memory after the chunk, read directly
            mem.update(n_ss0=n_ss_end.view(b, n * a, n), weight=None, carry=None)
        return mem

    # -- planning --------------------------------------------------------------------------------
    def features(self, n_sa, r_mean, scale, visited):
        n_s = n_sa.sum(-1, keepdim=True).expand_as(n_sa)
        feats = torch.stack([
            torch.log1p(n_sa), torch.log1p(n_s), torch.rsqrt(1.0 + n_sa), visited,
            r_mean / scale[..., None, None], (n_sa / n_s.clamp(min=1.0)),
        ], -1)
        return feats

    def context_features(self, mem: dict) -> torch.Tensor:
        """``[B, C, NUM_CONTEXT]`` summary of each row's whole history, each feature in about [0, 1]:
        steps so far, share of rewarded steps (reward sparsity), episodes so far, mean episode length,
        share of tried pairs among the seen observations, and the largest reward in units of the RMS."""
        n_sa = mem["n_sa"]
        steps, eps = mem["r_count"], mem["episodes"]
        seen_obs = (n_sa.sum(-1) > 0).float()
        tried = ((n_sa >= self.MIN_COUNT).float().sum(-1) * seen_obs).sum(-1)
        scale = mem["scale"]
        r_max = torch.where(mem["r_count"] > 0, mem["r_max"], torch.zeros_like(mem["r_max"])).clamp(min=0.0) / scale
        return torch.stack([
            torch.log1p(steps) / math.log(1e4),
            mem["r_nonzero"] / (steps + 1.0),
            torch.log1p(eps) / math.log(1e3),
            torch.log1p(steps / (eps + 1.0)) / math.log(1e3),
            tried / (seen_obs.sum(-1) * n_sa.shape[-1]).clamp(min=1.0),
            torch.log1p(r_max) / math.log(100.0),
        ], -1)

    def adjustments(self, mem: dict) -> torch.Tensor | None:
        """``[B, C, NUM_ADJUST]`` per-row changes to the discount logit, optimism and temperature read from
        the context, or ``None`` without ``config.context_adaptation``."""
        if not self.config.context_adaptation:
            return None
        return self.context(self.context_features(mem))

    def plan(self, mem: dict, values: torch.Tensor, action_mask: torch.Tensor | None, adjust: torch.Tensor | None = None):
        """``planning_steps`` Bellman backups on each row's empirical model from ``values [B, C, S]``;
        returns (Q ``[B, C, S, A]``, V ``[B, C, S]``).

        Rewards are divided by the history's running reward scale, so plans are scale-free. The backup of
        all rows is two dense products per step (see the class docstring); ``action_mask`` is ``[B, A]``.
        """
        n_sa, r_sum = mem["n_sa"], mem["r_sum"]
        b, c, s, a = n_sa.shape
        scale = mem["scale"]
        # A pair is tried when its count is >= MIN_COUNT: every whole count >= 1 (exact statistics), and with a
        # decaying memory a pair whose visits have faded below it counts as forgotten (no 1/0-like ratios).
        seen = n_sa >= self.MIN_COUNT
        visited = seen.float()
        safe = torch.where(seen, n_sa, torch.ones_like(n_sa))  # = max(n, 1) for whole counts
        r_mean = r_sum / safe
        r_hat = r_mean / scale[..., None, None]
        # Row-normalised empirical transitions times the discount, as a per-(row, pair) factor on the raw
        # counts' backup: the counts themselves never carry a gradient-bearing copy per row.
        gamma_logit = self.gamma_logit if adjust is None else self.gamma_logit + adjust[..., 0]
        gamma = torch.sigmoid(gamma_logit)
        gamma = gamma[..., None, None] if gamma.dim() else gamma
        step_scale = (gamma * (visited / safe)).reshape(b, c, s * a)
        r_max = torch.where(mem["r_count"] > 0, mem["r_max"], torch.zeros_like(mem["r_max"])) / scale
        # Optimism for untried pairs: r_max over the *initial* horizon 1/(1 - planning_gamma), scaled by a
        # learned factor. Tied to the fixed initial horizon, not to the learned discount, so the discount's
        # gradient comes from value propagation alone (tying them let imitation trade horizon for optimism).
        horizon = 1.0 / (1.0 - self.config.planning_gamma)
        opt_scale = self.optimism[0] if adjust is None else self.optimism[0] + adjust[..., 1]
        u = (F.softplus(opt_scale + math.log(math.e - 1.0)) * r_max.clamp(min=0.0) + self.optimism[1]) * horizon
        if adjust is not None:  # the context's extra optimism is in reward units (not times the horizon)
            u = u + adjust[..., 2]
        u = u[..., None, None]
        hidden = torch.tanh(self.bonus_in(self.features(n_sa, r_mean, scale, visited)))
        bonus = self.bonus_out(hidden)[..., 0]
        base = visited * r_hat + (1.0 - visited) * u + bonus
        if action_mask is not None:  # actions a task lacks are never worth taking
            base = base + torch.where(action_mask[:, None, None, :], 0.0, -1e9)
        base = base.reshape(b, c, s * a)
        alive = 1.0 - mem["terminal"]
        n_ss0_t = mem["n_ss0"].transpose(1, 2)  # [B, S, S*A]
        carry = mem["carry"]
        weight = mem["weight"]
        if weight is not None:
            pair_hot = F.one_hot(mem["sa"], s * a).to(base.dtype)  # [B, C, S*A]
            nxt = mem["next_obs"][:, None, :].expand(b, c, c)
        v = values
        q = base
        for _ in range(self.steps):
            backup = v @ n_ss0_t  # every row's backup on the chunk-start counts, [B, C, S*A]
            if carry is not None:
                backup = backup * carry[:, None]
            if weight is not None:  # + the chunk's own transitions
                backup = torch.baddbmm(backup, torch.gather(v, 2, nxt) * weight, pair_hot)
            q = torch.addcmul(base, step_scale, backup)
            v = q.view(b, c, s, a).max(-1).values * alive
        return q.view(b, c, s, a), v

    def temperature(self, adjust: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax temperature of the policy over normalised Q values (1 at initialisation); per row
        (``[B, C, 1]``) with the context's adjustments."""
        if adjust is None:
            return torch.exp(self.log_temperature)
        return torch.exp(self.log_temperature + adjust[..., 3:4])

    def world_model(self, mem, observations, actions):
        """Next-observation logits and reward prediction at each row from its statistics."""
        n_sa, r_sum = mem["n_sa"], mem["r_sum"]
        b, c, s, a = n_sa.shape
        pair = observations.clamp(min=0) * a + actions.clamp(min=0)  # the row's own (observation, action)
        count = torch.gather(n_sa.reshape(b, c, s * a), 2, pair[..., None])[..., 0]
        rsum = torch.gather(r_sum.reshape(b, c, s * a), 2, pair[..., None])[..., 0]
        # Its next-observation counts: the chunk-start row plus the chunk's transitions from the same pair.
        row = torch.gather(mem["n_ss0"], 1, pair[..., None].expand(b, c, s))
        if mem["carry"] is not None:
            row = row * mem["carry"][:, None]
        if mem["weight"] is not None:
            same = (pair[:, :, None] == mem["sa"][:, None, :]).to(row.dtype) * mem["weight"]
            row = torch.baddbmm(row, same, F.one_hot(mem["next_obs"], s).to(row.dtype))
        alpha = torch.exp(self.world_smoothing[0])
        beta = torch.exp(self.world_smoothing[1])
        obs_logits = torch.log((row + alpha / s) / (count[..., None] + alpha))
        total = n_sa.sum((-1, -2))
        r_bar = r_sum.sum((-1, -2)) / total.clamp(min=1.0)
        reward = (rsum + beta * r_bar) / (count + beta)
        return obs_logits, reward

    # -- the backbone interface (shared with SequenceBackbone) -------------------------------------
    def forward(self, observations, actions, rewards, cache: AnyMDPAgentCache, action_mask=None, tags=None,
                prompts=None, recurrent: bool = False, policy: bool = True):
        """``(policy_logits, observation_logits, reward_prediction, reward_scale, cache)`` for ``[B, T]`` rows.

        The planner reads neither tags nor prompts, and has one form for training and stepping
        (``recurrent`` changes nothing). ``policy=False`` skips the planning (the policy logits come back
        as zeros): for rows whose policy nobody reads, such as the row that closes an episode, only the
        memory is updated."""
        b, t = observations.shape
        chunk = self.config.chunk_size
        outs_pi, outs_obs, outs_rew, outs_scale = [], [], [], []
        pos = 0
        if t > 1 and bool((cache.step != cache.step[0]).any()):
            raise ValueError("histories of one batch must be at the same row to process several rows at once; "
                             "step them one row at a time")
        while pos < t:
            step0 = int(cache.step[0])
            length = min(chunk - step0 % chunk, t - pos)
            o = observations[:, pos:pos + length]
            a_ = actions[:, pos:pos + length]
            r = rewards[:, pos:pos + length]
            # Carried values are refreshed at chunk boundaries (absolute rows), per history.
            refresh = ((cache.step % chunk) == 0) & (cache.step > 0)
            anchor = torch.where(refresh[:, None], cache.values, cache.anchor)
            prev_obs, prev_act, prev_rew = previous_rows(o, a_, r, cache)
            mem = self.memory(cache, prev_obs, prev_act, prev_rew, o)
            start_values = anchor if self.config.carry_values else torch.zeros_like(anchor)
            c = o.shape[1]
            if policy:
                adjust = self.adjustments(mem)
                q, v = self.plan(mem, start_values[:, None].expand(b, c, -1), action_mask, adjust)
                q_now = torch.gather(q, 2, o.clamp(min=0)[..., None, None].expand(b, c, 1, q.shape[-1]))[:, :, 0]
                outs_pi.append(q_now / self.temperature(adjust))
            else:
                v = cache.values[:, None].expand(b, c, -1)
                outs_pi.append(torch.zeros(b, c, self.config.num_actions, device=o.device))
            obs_logits, rew_pred = self.world_model(mem, o, a_)
            outs_obs.append(obs_logits)
            outs_rew.append(rew_pred)
            outs_scale.append(mem["scale"])
            # The state after the chunk: statistics of all its rows, the last row pending.
            new = dict(cache.tensors)
            new.update({k: mem[k][:, -1] for k in ("n_sa", "r_sum", "terminal", "r_count", "r_sq", "r_max", "r_nonzero",
                                                   "episodes")})
            new["n_ss"] = mem["n_ss_end"]
            new["values"] = v[:, -1]
            new["anchor"] = anchor
            new.update(after_rows(cache, o, a_, r))
            cache = AnyMDPAgentCache(new, cache.layers)
            pos += length
        return (torch.cat(outs_pi, 1), torch.cat(outs_obs, 1), torch.cat(outs_rew, 1), torch.cat(outs_scale, 1), cache)

    def begin_row(self, cache: AnyMDPAgentCache, observations: torch.Tensor, action_mask=None, policy: bool = True):
        """Policy logits ``[B, A]`` at a new row's observations ``[B]`` and the state with the row in it
        (``policy=False``: the state only, the logits zeros).

        A row's policy never depends on its own action: the row runs with a placeholder action, which
        :meth:`end_row` replaces before the next row reads it."""
        obs = observations.view(-1, 1)
        pi, _, _, _, cache = self(obs, torch.zeros_like(obs), torch.zeros(obs.shape, device=obs.device), cache,
                                  action_mask, policy=policy)
        return pi[:, 0], cache

    def end_row(self, cache: AnyMDPAgentCache, actions: torch.Tensor, rewards: torch.Tensor) -> AnyMDPAgentCache:
        """The state with the current row's action (or episode-end id) and reward; the next row counts them."""
        return AnyMDPAgentCache(with_action(cache, actions, rewards), cache.layers)


# ---------------------------------------------------------------------- sequence backbone


def chunk_gated_linear_attention(q, k, v, log_decay, state, chunk: int):
    """Chunkwise-parallel gated linear attention.

    ``q, k [B, H, T, dk]``, ``v [B, H, T, dv]``, ``log_decay [B, H, T]`` (<= 0), ``state [B, H, dk, dv]``.
    Recurrence: ``S_t = exp(log_decay_t) S_{t-1} + k_t^T v_t``, output ``o_t = q_t S_t``. Inside a
    chunk the outputs are matrix products, for all chunks at once; only the small per-chunk states
    are carried in a loop (the sequence is reshaped into chunks and unbound, never sliced or indexed per
    chunk: each such backward fills a zero tensor of the whole sequence, quadratic in its length).
    """
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:  # padded tokens: zero keys/values, no decay, outputs dropped
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_decay = F.pad(log_decay, (0, pad))
    qc, kc, vc = (x.reshape(b, h, n, chunk, x.shape[-1]) for x in (q, k, v))
    g = log_decay.reshape(b, h, n, chunk).cumsum(-1)  # within each chunk, non-increasing
    diff = g[..., :, None] - g[..., None, :]  # g_i - g_j <= 0 for j <= i
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    weights = torch.where(causal, diff, torch.full_like(diff, -torch.inf)).exp()
    intra = ((qc @ kc.transpose(-1, -2)) * weights) @ vc  # [B, H, N, L, dv]
    q_decayed = qc * g.exp()[..., None]  # reads the state entering the chunk
    tail = (g[..., -1:] - g).exp()[..., None]  # decay from each token to its chunk's end
    updates = (kc * tail).transpose(-1, -2) @ vc  # [B, H, N, dk, dv]
    chunk_decay = g[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    inter = []
    # unbind, not [:, :, i]: each indexing's backward would fill a zero tensor of the whole sequence (quadratic)
    for qd, cd, up in zip(q_decayed.unbind(2), chunk_decay.unbind(2), updates.unbind(2)):
        inter.append(qd @ state)
        state = cd * state + up
    out = intra + torch.stack(inter, 2)
    return out.reshape(b, h, n * chunk, dv)[:, :, :t], state


def recurrent_gated_linear_attention(q, k, v, log_decay, state):
    """The same recurrence, one token at a time (``[B, H, 1, ...]`` inputs)."""
    state = log_decay.exp()[..., None] * state + k[..., 0, :, None] * v[..., 0, None, :]  # outer product
    return (q[..., 0, :, None] * state).sum(-2)[..., None, :], state


@functools.lru_cache(maxsize=1)
def fla_chunk_simple_gla():
    """flash-linear-attention's Triton kernel for this very recurrence (scalar gate per head and token),
    ``fla.ops.simple_gla.chunk_simple_gla``, or ``None`` where the package does not import."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # not installed, or no Triton build for this machine
        return None
    return chunk_simple_gla


def fla_gated_linear_attention(kernel, q, k, v, log_decay, state):
    """:func:`chunk_gated_linear_attention` through ``kernel`` (fla's ``chunk_simple_gla``): same inputs
    and outputs. fla computes ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t`` on
    ``[B, T, H, D]`` tensors (releases that still default to head-first take ``head_first=False``), with
    the state ``[B, H, dk, dv]`` as here; the queries are already scaled, so ``scale = 1``.
    Not exercised on this project's CPU-only CI except against a stand-in with fla's contract."""
    extra = {"head_first": False} if "head_first" in inspect.signature(kernel).parameters else {}
    o, final = kernel(q=q.transpose(1, 2), k=k.transpose(1, 2), v=v.transpose(1, 2), g=log_decay.transpose(1, 2),
                      scale=1.0, initial_state=state, output_final_state=True, **extra)
    return o.transpose(1, 2), final


class GatedLinearAttention(nn.Module):
    """Multi-head linear attention with a data-dependent scalar decay per head and an output gate."""

    def __init__(self, config: AnyMDPAgentConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        d = config.hidden_size
        self.qkvg = nn.Linear(d, 4 * d, bias=False)
        self.decay = nn.Linear(d, self.heads)
        self.out = nn.Linear(d, d, bias=False)
        self.norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.chunk = config.chunk_size
        self.use_fla = config.use_flash_linear_attention

    #: Devices whose tensors go through flash-linear-attention when it is installed (Triton needs a GPU).
    fla_device_types = ("cuda",)

    def decay_bias_init(self) -> torch.Tensor:
        """Per-head decay timescales spread from ~10 to ~10^4 tokens (softplus(bias) = -log decay)."""
        timescale = torch.logspace(1, 4, self.heads)
        return torch.log(torch.expm1(1.0 / timescale))

    def forward(self, x, state, recurrent: bool):
        b, t, d = x.shape
        q, k, v, g = self.qkvg(x).chunk(4, -1)
        split = lambda z: z.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = F.normalize(split(q), dim=-1) * self.head_dim ** -0.5
        k = F.normalize(split(k), dim=-1)
        v = split(v)
        log_decay = -F.softplus(self.decay(x)).transpose(1, 2)  # [B, H, T]
        use_fla = not recurrent and self.use_fla and x.device.type in self.fla_device_types
        kernel = fla_chunk_simple_gla() if use_fla else None
        if recurrent:
            outs = []
            for i in range(t):
                o, state = recurrent_gated_linear_attention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1],
                                                            log_decay[:, :, i:i + 1], state)
                outs.append(o)
            o = torch.cat(outs, 2)
        elif kernel is not None:
            o, state = fla_gated_linear_attention(kernel, q, k, v, log_decay, state)
        else:
            o, state = chunk_gated_linear_attention(q, k, v, log_decay, state, self.chunk)
        o = self.norm(o).transpose(1, 2).reshape(b, t, d) * F.silu(g)
        return self.out(o), state


class SwiGLU(nn.Module):
    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, -1)
        return self.down(F.silu(gate) * up)


class AnyMDPAgentLayer(nn.Module):
    """Pre-norm block: gated linear attention, then a SwiGLU MLP, both residual."""

    def __init__(self, config: AnyMDPAgentConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = GatedLinearAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, state, recurrent: bool = False):
        h, state = self.attn(self.attn_norm(x), state, recurrent)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class ObservationStatistics(nn.Module):
    """Per-observation statistics as extra input features of the sequence backbone (``config.observation_statistics``).

    An exact memory per (observation, action), as linear attention with one-hot keys and no decay: visit counts
    ``n``, reward sums and discounted-return sums (every visit adds the rewards that follow it, discounted by
    ``config.statistics_discount``, until its episode ends: an eligibility trace, cut at episode ends). Row ``j`` reads the
    row's own observation: for every action, ``log(1 + n)``, ``1[n > 0]``, the mean reward and the mean
    discounted return (discount ``config.statistics_discount``; both in units of the history's reward scale), ``4 * num_actions`` numbers projected into
    the observation token. The return of a recent visit is still partial. Nothing here plans over the
    observation space: the layers above must learn what to do with it.

    With ``config.statistics_lookahead`` it also keeps next-observation counts per (observation, action) and adds,
    per action, a one-step lookahead on those returns: the empirical mean over the pair's next observations of
    their best mean discounted return (``num_actions`` more numbers; 0 for an untried pair).

    Row ``j`` counts the transitions of the rows before it (the last row's transition is the cache's ``last_*``),
    so chunked and stepped forms count the same transitions.
    """

    #: Log of a cut trace (at an episode end): exp of it is 0 in float64.
    CUT = -1e4

    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__()
        self.num_actions = config.num_actions
        self.discount = float(config.statistics_discount)
        self.lookahead = bool(config.statistics_lookahead)
        self.proj = nn.Linear((5 if self.lookahead else 4) * config.num_actions, config.hidden_size)

    def initial_tensors(self, batch: int, n_obs: int, device) -> dict[str, torch.Tensor]:
        z = torch.zeros(batch, n_obs, self.num_actions, device=device)
        out = {"stat_n": z, "stat_r": z.clone(), "stat_g": z.clone(), "stat_trace": z.clone()}
        if self.lookahead:
            out["stat_next"] = torch.zeros(batch, n_obs, self.num_actions, n_obs, device=device)
        return out

    def forward(self, cache, prev_obs, prev_act, prev_rew, observations, scale):
        """Token features ``[B, T, hidden]`` of rows ``[B, T]`` and the memory after them (a dict of cache tensors).

        ``prev_*`` are each row's previous row (its transition is counted before the row reads), ``scale [B, T]``
        the reward scale at each row, ``cache`` holds the memory before the first row.
        """
        b, t = observations.shape
        n, a = cache.stat_n.shape[1], self.num_actions
        dev = observations.device
        real = (prev_act >= 0).float()
        rew = prev_rew * real
        sa = prev_obs.clamp(min=0) * a + prev_act.clamp(min=0)
        hot = torch.zeros(b, t, n * a, device=dev).scatter_(2, sa[..., None], real[..., None])
        flat = lambda x: x.reshape(b, 1, n * a)  # noqa: E731
        counts = flat(cache.stat_n) + hot.cumsum(1)
        sums = flat(cache.stat_r) + (hot * rew[..., None]).cumsum(1)
        # Trace E_j = d_j E_{j-1} + onehot_j (d = 0 where the previous row closed an episode), G_j = G_{j-1} + r_j E_j;
        # in closed form over the rows, in float64 (the cut is a log of -1e4).
        log_d = torch.where(prev_act >= 0, math.log(self.discount), self.CUT).double()
        cum = log_d.cumsum(1)
        lag = cum[:, :, None] - cum[:, None, :]
        causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
        mix = torch.where(causal, lag, torch.full_like(lag, -torch.inf)).exp()
        trace = cum.exp()[..., None] * flat(cache.stat_trace).double() + mix @ hot.double()
        returns = flat(cache.stat_g).double() + (trace * rew.double()[..., None]).cumsum(1)
        at = (observations[..., None] * a + torch.arange(a, device=dev)).clamp(max=n * a - 1)
        n_o = counts.gather(2, at)  # [B, T, A] at the row's observation
        per_visit = n_o.clamp(min=1.0) * scale[..., None]
        parts = [torch.log1p(n_o), (n_o > 0).float(), sums.gather(2, at) / per_visit,
                 returns.gather(2, at).float() / per_visit]
        last = lambda x: x[:, -1].reshape(b, n, a).float()  # noqa: E731
        memory = {"stat_n": last(counts), "stat_r": last(sums), "stat_g": last(returns), "stat_trace": last(trace)}
        if self.lookahead:
            # Next-observation counts of each row (the chunk's transitions i <= j on top of the cache's).
            hot_next = torch.zeros(b, t, n * a * n, device=dev).scatter_(
                2, (sa * n + observations.clamp(min=0))[..., None], real[..., None])
            nxt = cache.stat_next.reshape(b, 1, n * a * n) + hot_next.cumsum(1)
            # Each observation's best mean discounted return over its tried actions (0 if none), per row.
            mean_g = (returns.float() / counts.clamp(min=1.0)).view(b, t, n, a)
            best = torch.where(counts.view(b, t, n, a) > 0, mean_g, torch.full_like(mean_g, -torch.inf)).max(-1).values
            value = torch.where(torch.isfinite(best), best, torch.zeros_like(best)) / scale[..., None]  # [B, T, S]
            rows = nxt.view(b, t, n * a, n).gather(2, at[..., None].expand(b, t, a, n))  # [B, T, A, S]
            parts.append((rows * value[:, :, None, :]).sum(-1) / n_o.clamp(min=1.0))
            memory["stat_next"] = nxt[:, -1].reshape(b, n, a, n)
        return self.proj(torch.cat(parts, -1)), memory


class SequenceBackbone(nn.Module):
    """Token embeddings (two tokens per row), the gated-linear-attention stack and the heads (the
    ``sequence`` backbone), behind the same interface as :class:`InContextPlanner`.

    The policy head reads each row's observation token; the world-model heads read its action token.
    The state is one ``[B, H, dk, dv]`` matrix per layer plus the running reward statistics.
    """

    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.obs_embed = nn.Embedding(config.num_observations, d)
        self.action_embed = nn.Embedding(config.num_actions + 2, d)  # + the two episode-end ids
        self.tag_embed = nn.Embedding(config.num_tags, d)
        self.prompt_embed = nn.Embedding(config.num_prompts, d)
        self.reward_proj = nn.Linear(1, d)
        self.statistics = ObservationStatistics(config) if config.observation_statistics else None
        self.layers = nn.ModuleList([AnyMDPAgentLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(d, config.rms_norm_eps)
        self.policy_head = nn.Linear(d, config.num_actions)
        self.observation_head = nn.Linear(d, config.num_observations)
        self.reward_head = nn.Linear(d, 1)
        self.gradient_checkpointing = False

    # -- state ---------------------------------------------------------------------------------
    def initial_cache(self, batch: int, n_obs: int, device) -> AnyMDPAgentCache:
        """A fresh state (the embeddings cover every observation id, so ``n_obs`` changes nothing)."""
        h = self.config.num_heads
        hd = self.config.hidden_size // h
        tensors = {**initial_rows(batch, device), "r_count": torch.zeros(batch, device=device),
                   "r_sq": torch.zeros(batch, device=device, dtype=torch.float64)}
        if self.statistics is not None:
            tensors.update(self.statistics.initial_tensors(batch, self.config.num_observations, device))
        return AnyMDPAgentCache(tensors, [torch.zeros(batch, h, hd, hd, device=device) for _ in self.layers])

    def state_observations(self, cache: AnyMDPAgentCache) -> int:
        return self.config.num_observations

    # -- tokens and the stack -------------------------------------------------------------------
    def action_ids(self, actions: torch.Tensor) -> torch.Tensor:
        """Embedding ids of actions: ``0..A-1``, then the two episode-end ids."""
        a = self.config.num_actions
        return torch.where(actions == END_TERMINATED, a, torch.where(actions == END_TRUNCATED, a + 1, actions))

    def embed(self, observations, actions, prev_rewards, tags, prompts, statistics=None):
        """The ``[B, 2T, hidden]`` tokens of ``[B, T]`` rows; ``statistics`` (``[B, T, hidden]``, from
        :class:`ObservationStatistics`) is added to the observation tokens."""
        x_obs = (self.obs_embed(observations) + self.reward_proj(symlog(prev_rewards)[..., None])
                 + self.prompt_embed(prompts)[:, None])
        if statistics is not None:
            x_obs = x_obs + statistics
        x_act = self.action_embed(self.action_ids(actions).clamp(min=0)) + self.tag_embed(tags)
        b, t, d = x_obs.shape
        return torch.stack([x_obs, x_act], 2).reshape(b, 2 * t, d)

    def stack(self, tokens, layer_states, recurrent: bool = False):
        """The layers over ``[B, L, d]`` tokens from ``layer_states``; returns the normed output and the states."""
        x = tokens
        new_states = []
        for layer, state in zip(self.layers, layer_states):
            if self.gradient_checkpointing and self.training:
                x, state = checkpoint(layer, x, state, recurrent, use_reentrant=False)
            else:
                x, state = layer(x, state, recurrent)
            new_states.append(state)
        return self.norm(x), new_states

    # -- the backbone interface (shared with InContextPlanner) ----------------------------------
    def forward(self, observations, actions, rewards, cache: AnyMDPAgentCache, action_mask=None, tags=None,
                prompts=None, recurrent: bool = False):
        """``(policy_logits, observation_logits, reward_prediction, reward_scale, cache)`` for ``[B, T]`` rows.

        ``recurrent=True`` runs the stack token by token (same numbers); the model masks the policy."""
        b, t = observations.shape
        prev_obs, prev_act, prev_rew = previous_rows(observations, actions, rewards, cache)
        real = prev_act >= 0
        prev_rewards = torch.where(real, prev_rew, torch.zeros_like(prev_rew))
        r_count, r_sq = reward_statistics(cache, prev_rewards, real)
        scale = reward_scale(r_sq, r_count)
        new = {**cache.tensors, **after_rows(cache, observations, actions, rewards),
               "r_count": r_count[:, -1], "r_sq": r_sq[:, -1]}
        stats = None
        if self.statistics is not None:
            stats, memory = self.statistics(cache, prev_obs, prev_act, prev_rewards, observations, scale)
            new.update(memory)
        hidden, layers = self.stack(self.embed(observations, actions, prev_rewards, tags, prompts, stats),
                                    cache.layers, recurrent=recurrent)
        hidden = hidden.view(b, t, 2, -1)
        pi = self.policy_head(hidden[:, :, 0])
        obs_logits = self.observation_head(hidden[:, :, 1])
        rew_pred = self.reward_head(hidden[:, :, 1])[..., 0]
        return pi, obs_logits, rew_pred, scale, AnyMDPAgentCache(new, layers)

    def begin_row(self, cache: AnyMDPAgentCache, observations: torch.Tensor, action_mask=None, policy: bool = True):
        """Policy logits ``[B, A]`` at a new row's observations ``[B]``: feeds the observation token alone
        (``policy`` is accepted for the shared interface; the token must be fed either way)."""
        obs = observations.view(-1)
        real = cache.last_action >= 0
        prev_rew = torch.where(real, cache.last_reward, torch.zeros_like(cache.last_reward))
        token = self.obs_embed(obs) + self.reward_proj(symlog(prev_rew)[:, None]) + self.prompt_embed(torch.zeros_like(obs))
        r_count, r_sq = reward_statistics(cache, prev_rew[:, None], real[:, None])
        tensors = {**cache.tensors, "step": cache.step + 1, "last_obs": obs, "r_count": r_count[:, 0],
                   "r_sq": r_sq[:, 0]}
        if self.statistics is not None:
            scale = reward_scale(r_sq, r_count)
            stats, memory = self.statistics(cache, cache.last_obs[:, None], cache.last_action[:, None],
                                            prev_rew[:, None], obs[:, None], scale)
            tensors.update(memory)
            token = token + stats[:, 0]
        hidden, layers = self.stack(token[:, None], cache.layers, recurrent=True)
        return self.policy_head(hidden[:, 0]), AnyMDPAgentCache(tensors, layers)

    def end_row(self, cache: AnyMDPAgentCache, actions: torch.Tensor, rewards: torch.Tensor) -> AnyMDPAgentCache:
        """Feeds the current row's action token (an action or an episode-end id; the tag is ``unknown``)."""
        ids = self.action_ids(actions)
        token = self.action_embed(ids) + self.tag_embed(torch.full_like(ids, UNKNOWN_TAG))
        _, layers = self.stack(token[:, None], cache.layers, recurrent=True)
        return AnyMDPAgentCache(with_action(cache, actions, rewards), layers)


# ---------------------------------------------------------------------- model-based backbone

#: Per ``(s, a, t)`` inputs of the transition prior network (:func:`transition_prior_features`), and the inputs
#: ``chain=True`` adds (:func:`chain_coordinate`).
PRIOR_FEATURES = 20
CHAIN_FEATURES = 4


def prior_feature_count(chain: bool = False) -> int:
    """How many inputs per ``(s, a, t)`` the transition prior reads, with or without the chain inputs."""
    return PRIOR_FEATURES + (CHAIN_FEATURES if chain else 0)


#: With ``prior_seen_only``, a state sized to its environment keeps prior mass on ids it has not shown while it is
#: still finding new ones: until it has gone as many transitions without a new id as it took to find the last one,
#: and at least this many. Ids it has not shown by then are taken for ids the environment never uses. (100, AnyMDP's
#: shortest episode, closed the window before a chain's far states were found: on RiverSwim the agent then stayed at
#: the bank; 400 and 1,000 found them alike, and the shorter keeps unused ids' pull shorter.)
DISCOVERY_WINDOW = 400


def still_discovering(steps, discovered_at, sized) -> torch.Tensor:
    """``[B]`` (bool): the histories whose unshown ids still get prior mass under ``prior_seen_only``: sized to
    their environment and within :data:`DISCOVERY_WINDOW` (or the steps it took to find the last new id, if more)
    of the last new id. ``steps``, ``discovered_at`` ``[B]``: transitions so far, and at the last new id."""
    return sized & (steps - discovered_at <= discovered_at.clamp(min=DISCOVERY_WINDOW))


#: With ``prior_evidence``: the weights of the prior network's pseudo-counts whose evidence a history compares (1:
#: the calibrated posterior the prior is trained for). The plan's pseudo-counts are ``prior_weight`` times the best.
EVIDENCE_WEIGHTS = (0.0625, 0.125, 0.25, 0.5, 1.0)


def evidence_terms(pseudo_next, pseudo_total, count_next, n) -> torch.Tensor:
    """``[R, W]``: the log-probability of one transition each under the posterior-mean model with the prior
    network's pseudo-counts times each of :data:`EVIDENCE_WEIGHTS`, before the step. ``[R]`` each: the network's
    pseudo-count of the arrival and their sum over ids; the pair's count of the arrival and of all its steps (>= 1).
    An arrival that neither gives mass to is scored as 1e-6 of a count."""
    w = torch.tensor(EVIDENCE_WEIGHTS, dtype=torch.float64, device=n.device)
    num = w * pseudo_next.double()[:, None] + count_next.double()[:, None] + 1e-6
    return torch.log(num / (w * pseudo_total.double()[:, None] + n.double()[:, None]))


def evidence_weight(evidence: torch.Tensor) -> torch.Tensor:
    """``[B]``: the weight of :data:`EVIDENCE_WEIGHTS` with the highest summed log-probability ``evidence [B, W]``
    (ties, as before any evidence: the largest)."""
    w = torch.tensor(EVIDENCE_WEIGHTS, dtype=torch.float64, device=evidence.device)
    return w.flip(0)[evidence.flip(-1).argmax(-1)]


#: A refresh of the prior computes its inputs for at most this many bytes of ``[nO, nO]`` matrices at a time.
PRIOR_ROW_BYTES = 256 << 20


def prior_row_parts(rows: int, n_obs: int) -> list[slice]:
    """The parts a refresh of ``rows`` rows (the pairs of one observation of one history) computes the prior's
    inputs in: each row's features gather ``[nO, nO]`` reachability matrices, so one part holds at most
    :data:`PRIOR_ROW_BYTES` of them (and one row at least). A full refresh in one go would hold ``nO^3`` floats:
    4 GB at 1,000 ids. The agent and ``mbrl:prior=...`` both refresh in these parts."""
    step = max(1, PRIOR_ROW_BYTES // (4 * n_obs * n_obs))
    return [slice(i, i + step) for i in range(0, rows, step)]


def history_graph(counts, n_sa, visits, envs=None, states=None, chain: bool = False,
                  known: tuple | None = None) -> tuple:
    """What :func:`transition_prior_features` reads of each whole history, whichever rows it is asked for:
    the observed edges ``[B, nO, nO]`` (``x -> y`` seen), the ids two steps on, the ids near (two steps either way),
    all 0/1 float32, :func:`history_features` ``[B, 3]``, and with ``chain`` the pair ``(place, edge_count)``: each
    id's place along the graph (:func:`chain_coordinate`, ``[B, nO]``) and the number of observed edges it was
    computed at (:func:`edge_count`, ``[B]``); else ``None``. ``known``: that pair from an earlier call on the same
    histories (what a caller keeps in its state); the place depends on the observed edges alone, so it is
    recomputed only where one was added since (the eigensolver is most of the chain inputs' cost). Computed once,
    it serves any number of calls on rows of the same histories (a refresh in parts gives the same features as one
    in one go).

    ``envs``, ``states``: the rows ``(envs[i], states[i])`` the features will be asked for (``None``: any row).
    The features of a pair ``(s, a)`` read the two-step and near matrices only at the rows of the ids ``s`` was
    seen to lead to (``edges[s] > 0``); while those rows are few, only they are computed (the rest left 0), in
    ``O(nO^2)`` per row instead of ``O(nO^3)`` per history. The features are the same, bit for bit: the entries are
    exact integers before the clamp, and every other row is multiplied by 0."""
    counts = torch.as_tensor(counts)
    edges = (counts.sum(2) > 0).to(torch.float32)             # [B, x, y]: x -> y observed
    sym = (edges + edges.transpose(1, 2)).clamp(max=1.0)
    n = edges.shape[1]
    b = x = None
    if envs is not None:
        envs, states = torch.as_tensor(envs).long(), torch.as_tensor(states).long()
        r, x = torch.nonzero(edges[envs, states] > 0, as_tuple=True)
        needed = torch.zeros(edges.shape[:2], dtype=torch.bool, device=edges.device)
        needed[envs[r], x] = True
        b, x = torch.nonzero(needed, as_tuple=True)
    # only the needed rows while they are few (each gathers its history's [nO, nO] matrix), else every row at once
    if b is None or 2 * len(b) > edges.shape[0] * n or 4 * len(b) * n * n > PRIOR_ROW_BYTES:
        two, near = (edges @ edges).clamp(max=1.0), (sym @ sym).clamp(max=1.0)
    else:
        two, near = torch.zeros_like(edges), torch.zeros_like(edges)
        if len(b):
            for out, m in ((two, edges), (near, sym)):
                out[b, x] = torch.einsum("ky,kyz->kz", m[b, x], m[b]).clamp(max=1.0)
    located = None
    if chain:
        count = edge_count(edges)
        if known is None:
            place = chain_coordinate(sym, visits, counts)
        else:
            place, stale = known[0].clone(), torch.nonzero(count != known[1])[:, 0]
            if len(stale):
                place[stale] = chain_coordinate(sym[stale], torch.as_tensor(visits)[stale], counts[stale])
        located = (place, count)
    return edges, two, near, history_features(counts, n_sa, visits), located


def shown_ids(counts, visits) -> torch.Tensor:
    """``[B, nO]`` (bool): the ids each history has shown, left by a transition (``visits > 0``) or arrived at (a
    count into them); what :func:`history_features` counts and :func:`chain_coordinate` places."""
    return (torch.as_tensor(visits) > 0) | (torch.as_tensor(counts).sum((1, 2)) > 0)


def edge_count(edges: torch.Tensor) -> torch.Tensor:
    """``[B]`` (float64): how many edges ``x -> y`` each history has shown (``edges``: :func:`history_graph`'s first).
    Every id a history shows is the end of an edge, so the place of :func:`chain_coordinate` changes only with it."""
    return edges.sum((1, 2), dtype=torch.float64)


def chain_coordinate(sym, visits, counts) -> torch.Tensor:
    """``[B, nO]`` (float32): each id's place along the history's transition graph, in [0, 1]; -1 at ids the history
    has never shown. The place is the id's rank in the second eigenvector of the normalised Laplacian of the
    observed (undirected) edges, over the ids shown: the spectral ordering, which lays a chain of states out in
    order (on AnyMDP-16 histories of 300 steps its rank correlation with the hidden chain is about 0.96). The
    eigenvector's sign is arbitrary, so only distances between places mean anything. Ids with the same entry (ids
    the graph cannot tell apart) are ranked by id, so these inputs are equivariant under relabelling the ids only
    where the entries differ, as they do along a chain. ``sym [B, nO, nO]``: the observed edges either way (0/1)."""
    b, n, _ = sym.shape
    shown = shown_ids(counts, visits)
    eye = torch.eye(n, dtype=torch.float64, device=sym.device)
    w = sym.double() * (1.0 - eye) + 0.01 / n  # a weak link between every two ids keeps the graph connected
    inv = w.sum(-1).rsqrt()
    _, vec = torch.linalg.eigh(eye - inv[:, :, None] * w * inv[:, None, :])
    f = torch.where(shown, vec[..., 1] * inv, torch.full_like(inv, torch.inf))
    rank = f.argsort(-1).argsort(-1).to(torch.float32)
    k = shown.sum(-1, keepdim=True).to(torch.float32)
    return torch.where(shown, rank / (k - 1.0).clamp(min=1.0), torch.full_like(rank, -1.0))


def transition_prior_features(counts, n_sa, terminal, visits, arrival, envs=None, states=None,
                              graph=None, chain: bool = False) -> torch.Tensor:
    """The transition prior's inputs (float32) from a history's statistics: ``[B, nO, na, nO, F]`` for every pair,
    or ``[R, na, nO, F]`` for the pairs of the ``R`` rows ``(envs[i], states[i])``; ``F`` is
    :func:`prior_feature_count` of ``chain``.

    ``counts [B, nO, na, nO]`` transition counts, ``n_sa [B, nO, na]`` their sums, ``terminal [B, nO]`` ids an
    episode ended in, ``visits [B, nO]`` how often each id was left by a transition, ``arrival [B, nO]`` the mean
    reward of arriving at each id divided by the history's RMS reward (0 where never arrived at).

    Per ``(s, a, t)``: the pair's empirical row ``p``, its visits, whether ``t`` was seen from it; the other
    actions' row at ``s``, whether they reached ``t``, their visits; whether ``t`` was seen to lead back to ``s``;
    whether ``t`` is ``s``; whether ``t`` ended an episode; ``t``'s visits; how many ids ``s`` was seen to lead
    to; ``1 / n``; where the pair's targets were seen to lead next (one and two steps), what leads into them,
    what is near them; and the mean reward of arriving at ``t`` relative to arriving at the pair's targets.
    Three more describe the whole history (:func:`history_features`): how deterministic its transitions look,
    how many pairs say so, and ``1 /`` the number of ids it has shown (how many ids the pseudo-counts spread
    over). Every feature is the same function of every id, so the prior is equivariant under relabelling ids.
    With ``chain``, four more (:data:`CHAIN_FEATURES`) from each id's place along the graph
    (:func:`chain_coordinate`): its distance to the pair's mean outcome, its distance to ``s``, how far it lies
    beyond the outcome seen from ``s`` (signed, the same for either orientation of the ordering), and whether it
    has a place. ``graph``: :func:`history_graph` of these histories (with ``chain`` if ``chain``), if already
    computed.
    """
    counts = torch.as_tensor(counts)
    b, n, na, _ = counts.shape
    if envs is None:
        envs = torch.arange(b, device=counts.device).repeat_interleave(n)
        states = torch.arange(n, device=counts.device).repeat(b)
        return transition_prior_features(counts, n_sa, terminal, visits, arrival, envs, states, graph, chain).reshape(
            b, n, na, n, prior_feature_count(chain))
    f32 = torch.float32
    envs, states = torch.as_tensor(envs).long(), torch.as_tensor(states).long()
    edges, two, near, whole, located = history_graph(counts, n_sa, visits, chain=chain) if graph is None else graph
    if chain and located is None:
        raise ValueError("chain features need a history_graph computed with chain=True")
    c = counts[envs, states].to(f32)                          # [R, na, t]
    m = torch.as_tensor(n_sa)[envs, states].to(f32)           # [R, na]
    p = c / m.clamp(min=1.0)[..., None]
    total = c.sum(1, keepdim=True)                            # [R, 1, t]: from s under any action
    other = total - c                                         # the other actions' counts to t
    m_other = m.sum(1, keepdim=True) - m
    p_other = other / m_other.clamp(min=1.0)[..., None]
    seen_from_s = (total > 0).to(f32).sum(-1, keepdim=True)   # how many ids s was seen to lead to
    e = edges[envs]                                           # [R, x, y]
    back = edges.transpose(1, 2)[envs, states][:, None, :]    # t -> s observed, [R, 1, t]
    then = p @ e                                              # where the pair's targets were seen to lead
    into = p @ e.transpose(1, 2)                              # what was seen to lead into them
    then2 = p @ two[envs]
    around = p @ near[envs]
    arr = torch.as_tensor(arrival)[envs].to(f32)[:, None, :]  # [R, 1, t]
    rise = arr - (p * arr).sum(-1, keepdim=True)
    self_loop = (torch.arange(n, device=counts.device)[None, :] == states[:, None])[:, None, :]
    shape = (len(envs), na, n)
    whole = whole[envs][:, None, None, :]                     # [R, 1, 1, 3]
    parts = (p, torch.log1p(m)[..., None], c > 0, p_other, other > 0, torch.log1p(m_other)[..., None], back, self_loop,
             torch.as_tensor(terminal)[envs][:, None, :], torch.log1p(torch.as_tensor(visits)[envs].to(f32))[:, None, :],
             torch.log1p(seen_from_s), 1.0 / m.clamp(min=1.0)[..., None], then, into, then2, around, torch.tanh(rise),
             *whole.unbind(-1))
    if chain:
        place = located[0]
        r = place[envs][:, None, :]                           # [R, 1, t], -1 where never shown
        has = r >= 0
        r_s = place[envs, states][:, None, None]              # [R, 1, 1]
        land = (p * r.clamp(min=0.0)).sum(-1, keepdim=True)   # [R, na, 1]: the pair's mean outcome's place
        parts += (torch.where(has, (r - land).abs(), 1.0), torch.where(has & (r_s >= 0), (r - r_s).abs(), 1.0),
                  torch.where(has, 4.0 * (r - land) * (land - r_s.clamp(min=0.0)), 0.0), has)
    return torch.stack([x.to(f32).expand(shape) for x in parts], -1)


def history_features(counts, n_sa, visits) -> torch.Tensor:
    """``[B, 3]`` (float32) per history: the share of its pairs tried twice or more whose visits all landed on one
    id (0 before any pair is), ``log(1 +`` the number of those pairs``)``, and ``1 /`` the number of ids it has
    shown (left or arrived at; 1 before any transition). A prior fitted to stochastic rows would spread
    pseudo-counts over a deterministic task's next ids, and its mass per id summed over hundreds of ids
    would outweigh the visits; these let it know both."""
    counts = torch.as_tensor(counts)
    f32 = torch.float32
    repeated = torch.as_tensor(n_sa) >= 2                                   # [B, nO, na]
    single = (counts > 0).sum(-1) == 1
    k = repeated.flatten(1).sum(-1).to(f32)
    det = (repeated & single).flatten(1).sum(-1).to(f32) / k.clamp(min=1.0)
    shown = shown_ids(counts, visits)
    inv = 1.0 / shown.sum(-1).to(f32).clamp(min=1.0)
    return torch.stack([det, torch.log1p(k), inv], -1)


def mean_arrival(arrival_sum, arrival_n) -> torch.Tensor:
    """``[B, nO]``: the mean reward of arriving at each id over the history's arrivals from every pair (0 where never
    arrived at: both sums are still 0 there)."""
    return arrival_sum / arrival_n.clamp(min=1.0)


def relative_arrival(arrival_sum, arrival_n, reward_sq, steps) -> torch.Tensor:
    """The ``arrival`` input of :func:`transition_prior_features`: each id's :func:`mean_arrival` over the history's
    RMS reward (``sqrt(reward_sq / steps)``, ``[B]``)."""
    rms = torch.sqrt(reward_sq / steps.clamp(min=1.0))[:, None] + 1e-8
    return mean_arrival(arrival_sum, arrival_n) / rms


def pseudo_reward(n_ss, n_sa, pseudo, arrival_sum, arrival_n) -> torch.Tensor:
    """``[B, nO, na]``: what a pair's pseudo-transitions ``pseudo [B, nO, na, nO]`` add to its reward sum, beyond
    the pair's mean reward each, under ``prior_arrival_reward``: each one to ``t`` adds ``t``'s :func:`mean_arrival`
    minus the mean arrival reward of the pair's own transitions (``n_ss`` over ``n_sa``); ids never arrived at add
    nothing. Float64."""
    b, s, a, n = pseudo.shape
    arrived = arrival_n > 0
    mean = mean_arrival(arrival_sum, arrival_n).to(torch.float64)[..., None]  # [B, nO, 1]
    own = torch.bmm(n_ss.to(torch.float64).reshape(b, s * a, n), mean).view(b, s, a) / n_sa.clamp(min=1.0)
    g = pseudo.to(torch.float64) * arrived[:, None, None, :]
    return torch.bmm(g.reshape(b, s * a, n), mean).view(b, s, a) - g.sum(-1) * own


def optimism_level(r_max, r_absmax, novelty: float):
    """The reward level ``[B]`` an untried pair is worth over the horizon (times the planner's optimism):
    ``max(r_max, 0)``, the largest reward seen, and with ``novelty = d > 0`` at least ``d * m``, ``m`` the largest
    reward magnitude seen (``r_absmax``), or 1 while every reward seen is 0. So while no positive reward has been
    seen an untried pair is still worth more than nothing: the plan heads for untried pairs instead of breaking
    all-zero ties at random or ending episodes for a reward of 0 when every reward so far was a cost. Tensors in,
    a tensor out; numpy arrays in (the harness planner, every step), an array out, with no conversion."""
    level = r_max.clip(min=0.0)
    if novelty > 0:  # r_absmax >= 0; where it is 0 (every reward 0 so far) the magnitude is 1
        level = level.clip(min=novelty * (r_absmax + (r_absmax == 0)))
    return level


class TransitionPriorNetwork(nn.Module):
    """``features [..., prior_feature_count(chain)] -> pseudo-counts [...] >= 0``: a per-``(s, a, t)`` MLP, the same
    for every id, so one prior serves any number of states and actions (``chain``: it reads the chain inputs too).
    With the pseudo-counts ``g`` a tried pair's posterior-mean model is ``(counts + g) / (n + sum g)``. Initialised to
    a prior of about zero (the empirical model)."""

    def __init__(self, hidden: int = 32, chain: bool = False):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"the transition prior needs hidden >= 1, got {hidden}")
        self.hidden, self.chain = hidden, bool(chain)
        self.num_features = prior_feature_count(self.chain)
        self.net = nn.Sequential(nn.Linear(self.num_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        for layer in self.net:  # initialised by reset_to_empirical, not as a generic Linear
            layer.prior_layer = True
        self.reset_to_empirical()

    def reset_to_empirical(self) -> None:
        """Hidden layers at a fan-in scale, the output at a pseudo-count of ``softplus(-8)``, about 3e-4."""
        for layer in (self.net[0], self.net[2]):
            init.normal_(layer.weight, mean=0.0, std=layer.in_features ** -0.5)
            init.zeros_(layer.bias)
        init.zeros_(self.net[-1].weight)
        init.constant_(self.net[-1].bias, -8.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(features)[..., 0])


class ModelBasedPlanner(nn.Module):
    """The count-based model-based planner with a learned transition prior (the ``model_based`` backbone).

    The state is exact statistics of the history per ``(observation, action)``: visit counts, reward sums,
    next-observation counts, observed terminal observations, the largest reward, and the values ``V`` of the
    last plan. After every transition, ``planner_sweeps`` synchronous value-iteration sweeps warm-started from
    ``V`` update the plan, with the discount ``planning_gamma``; an untried pair is worth
    ``planner_optimism * level / (1 - gamma)`` (:func:`optimism_level`: ``max(r_max, 0)``, with
    ``planner_novelty`` never 0), and terminal observations 0. The policy is greedy on
    the plan's Q at the current observation, ties shared uniformly: its logits are 0 on the best actions and
    :data:`NOT_BEST` elsewhere, so sampling at any temperature > 0 breaks ties at random.

    The learned part is :class:`TransitionPriorNetwork` (``prior_hidden`` wide): from the history's statistics it
    gives every pair pseudo-counts ``g`` over next observations (times ``prior_weight``), and a tried pair is worth
    the larger of its empirical backup and its backup on the posterior-mean model ``(counts + g) / (n + sum g)``: a pair whose few
    visits happened to land badly keeps the value its prior says it may have, until visits settle it. With
    ``g = 0`` this is exactly the classic planner (untrained, ``g`` is about 3e-4). The pseudo-counts of the
    observation just left are recomputed after every transition, those of every pair after
    ``max(prior_refresh, prior_refresh_fraction * steps)`` transitions; only tried pairs get them (an untried
    pair is worth the optimism), and with ``prior_seen_only``, in a state started with the whole vocabulary
    (``initial_state`` without ``num_observations``), only at ids the history has shown, so the network runs on
    those alone; a state sized to its environment keeps prior mass on its ids not yet shown (states not yet
    reached) while it is still finding new ones (:func:`still_discovering`) and holds no more ids than the config's
    vocabulary. Nothing here is differentiated through the plan: the prior is trained on its own, by the
    cross-entropy of the true next-observation rows of training tasks (``anymdp_agent.training.transition_prior``),
    and :meth:`forward`'s observation logits are its posterior-mean prediction.

    Cost per step is constant in the history's length: a few dense ``[S*A, S] x [S]`` products per history.
    """

    NOT_BEST = -1e4
    #: Q values this close (relative) count as tied: the harness' ``TIE_TOLERANCE`` (this file stands alone).
    TIE = 1e-9
    #: Nothing here is sized by the vocabulary: the statistics are per id and pair, and the prior is the same
    #: network for every id and action, so a state may hold any number of observation ids and actions.
    SIZE_FREE = True

    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__()
        self.config = config
        self.prior = TransitionPriorNetwork(config.prior_hidden, chain=config.prior_chain_features)

    # -- state ---------------------------------------------------------------------------------
    def initial_cache(self, batch: int, n_obs: int, device, n_actions: int | None = None,
                      sized: bool = False) -> AnyMDPAgentCache:
        """``sized``: the caller named the environment's ids (``initial_state(num_observations=...)``), so an id the
        history has not shown yet is a state not yet reached, not a vocabulary slot no environment uses."""
        a = self.config.num_actions if n_actions is None else n_actions
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        return AnyMDPAgentCache({
            **initial_rows(batch, device),
            "n_sa": z(batch, n_obs, a), "r_sum": z(batch, n_obs, a), "n_ss": z(batch, n_obs, a, n_obs),
            "terminal": torch.zeros(batch, n_obs, dtype=torch.bool, device=device), "r_max": z(batch),
            "r_absmax": z(batch), "r_count": z(batch), "r_sq": z(batch), "values": z(batch, n_obs),
            "pseudo": z(batch, n_obs, a, n_obs), "pseudo_total": z(batch, n_obs, a), "visits": z(batch, n_obs),
            # with prior_arrival_reward: what each pair's pseudo-transitions add to its reward sum (pseudo_reward)
            "pseudo_reward": z(batch, n_obs, a),
            "arrival_sum": z(batch, n_obs), "arrival_n": z(batch, n_obs),
            # the observation the last transition left (-1: none since the last plan), transitions since every
            # pair's pseudo-counts were recomputed
            "left": torch.full((batch,), -1, dtype=torch.long, device=device),
            "since_refresh": torch.zeros(batch, dtype=torch.long, device=device),
            # with prior_chain_features: each id's place along the graph and the edge count it was computed at
            "place": torch.full((batch, n_obs), -1.0, device=device), "place_edges": z(batch),
            "sized": torch.full((batch,), bool(sized), dtype=torch.bool, device=device),
            # transitions so far when the history last showed a new id (prior_seen_only, still_discovering)
            "discovered_at": z(batch),
            # with prior_evidence: each weight's summed log-probability of the transitions so far, and the weight
            # the pseudo-counts carry (times prior_weight)
            "evidence": z(batch, len(EVIDENCE_WEIGHTS)),
            "prior_scale": torch.ones(batch, dtype=torch.float64, device=device),
            # transitions in the current episode, and the longest episode that ended by truncation (0: none yet):
            # the episode's length, which planner_tail_steps plans for
            "episode_steps": z(batch), "episode_cap": z(batch)})

    @staticmethod
    def state_observations(cache: AnyMDPAgentCache) -> int:
        return int(cache.n_sa.shape[1])

    @staticmethod
    def state_actions(cache: AnyMDPAgentCache) -> int:
        return int(cache.n_sa.shape[2])

    # -- the model's updates -------------------------------------------------------------------
    def record(self, cache: AnyMDPAgentCache, observations: torch.Tensor) -> dict[str, torch.Tensor]:
        """The statistics with the last row's transition into ``observations`` (and its episode end) in them."""
        t = {k: v.clone() for k, v in cache.tensors.items()}
        prev_obs, prev_act, prev_rew = cache.last_obs, cache.last_action, cache.last_reward.double()
        real = torch.nonzero(prev_act >= 0)[:, 0]
        if len(real):
            s, a, s2, r = prev_obs[real], prev_act[real], observations[real], prev_rew[real]
            new = ((t["visits"][real, s] + t["arrival_n"][real, s] == 0) |
                   (t["visits"][real, s2] + t["arrival_n"][real, s2] == 0))  # either end shown for the first time
            if self.config.prior_evidence:
                shown_before = self.shown(t, real)
                self.add_evidence(t, real, s, a, s2, shown_before)
            t["n_ss"][real, s, a, s2] += 1.0
            t["n_sa"][real, s, a] += 1.0
            t["r_sum"][real, s, a] += r
            t["r_max"][real] = torch.maximum(t["r_max"][real], r)
            t["r_absmax"][real] = torch.maximum(t["r_absmax"][real], r.abs())
            t["r_count"][real] += 1.0
            t["r_sq"][real] += r * r
            t["visits"][real, s] += 1.0
            t["arrival_sum"][real, s2] += r
            t["arrival_n"][real, s2] += 1.0
            t["left"][real] = s
            t["since_refresh"][real] += 1
            t["discovered_at"][real[new]] = t["r_count"][real[new]]
            t["episode_steps"][real] += 1.0
            if self.config.prior_evidence:
                self.reweigh(t, real, shown_before)
        ended = torch.nonzero(prev_act == END_TERMINATED)[:, 0]
        t["terminal"][ended, prev_obs[ended]] = True
        cut = prev_act == END_TRUNCATED
        t["episode_cap"] = torch.where(cut, torch.maximum(t["episode_cap"], t["episode_steps"]), t["episode_cap"])
        t["episode_steps"] = torch.where(cut | (prev_act == END_TERMINATED), 0.0, t["episode_steps"])
        return t

    @staticmethod
    def shown(t: dict[str, torch.Tensor], envs) -> torch.Tensor:
        """``[R, nO]`` (bool): the ids the histories ``envs`` have shown, left or arrived at (:func:`shown_ids`)."""
        return (t["visits"][envs] + t["arrival_n"][envs]) > 0

    def evidence_units(self, t: dict[str, torch.Tensor], envs, shown=None) -> torch.Tensor:
        """``[R, nO]``: what the network's pseudo-counts of ``envs`` are multiplied by under ``prior_evidence``:
        ``prior_weight`` times the history's weight at the ids it has ``shown`` (now, by default), ``prior_weight``
        alone at ids not shown yet (states it may still reach keep the prior's full pull)."""
        shown = self.shown(t, envs) if shown is None else shown
        return self.config.prior_weight * torch.where(shown, t["prior_scale"][envs, None], 1.0)

    def add_evidence(self, t: dict[str, torch.Tensor], envs, s, a, s2, shown: torch.Tensor) -> None:
        """``prior_evidence``: each weight's log-probability of the transitions ``(s, a) -> s2`` of ``envs`` (one
        each) from pairs already tried, before they are counted (``shown``: the ids ``envs`` have shown so far)."""
        n = t["n_sa"][envs, s, a]
        tried = torch.nonzero(n > 0)[:, 0]
        if len(tried):
            e, s, a, s2 = envs[tried], s[tried], a[tried], s2[tried]
            net = t["pseudo"][e, s, a] / self.evidence_units(t, e, shown[tried])  # the network's own [R, nO]
            t["evidence"][e] += evidence_terms(net[torch.arange(len(e), device=e.device), s2], net.sum(-1),
                                               t["n_ss"][e, s, a, s2], n[tried])

    def reweigh(self, t: dict[str, torch.Tensor], envs, shown_before: torch.Tensor) -> None:
        """``prior_evidence``: after a transition of ``envs``, their pseudo-counts rescaled where the best weight
        changed or an id was shown for the first time (``shown_before``: the ids shown before it), so they stay the
        network's times :meth:`evidence_units`."""
        old = self.evidence_units(t, envs, shown_before)
        t["prior_scale"][envs] = evidence_weight(t["evidence"][envs])
        ratio = self.evidence_units(t, envs) / old  # [R, nO]
        moved = torch.nonzero((ratio != 1.0).any(-1))[:, 0]
        if len(moved):
            e = envs[moved]
            t["pseudo"][e] *= ratio[moved][:, None, None, :]
            t["pseudo_total"][e] = t["pseudo"][e].sum(-1)

    def refresh_prior(self, t: dict[str, torch.Tensor], pending: torch.Tensor) -> None:
        """Recompute the pseudo-counts of the ``pending`` histories: every pair's where ``prior_refresh`` transitions
        (or ``prior_refresh_fraction`` of the history's, if more) have passed, else those of the observation just
        left."""
        cfg = self.config
        due = (t["r_count"] * cfg.prior_refresh_fraction).clamp(min=cfg.prior_refresh)
        full = pending & (t["since_refresh"] >= due)
        rows = pending & ~full
        n = t["n_sa"].shape[1]
        envs_full = torch.nonzero(full)[:, 0]
        envs_row = torch.nonzero(rows)[:, 0]
        envs = torch.cat([envs_full.repeat_interleave(n), envs_row])
        states = torch.cat([torch.arange(n, device=envs.device).repeat(len(envs_full)), t["left"][envs_row]])
        if not len(envs):
            return
        t["since_refresh"][envs_full] = 0
        # only tried pairs get pseudo-counts (an untried pair is worth the optimism whatever they are), so the
        # network runs on the rows with a tried pair and, with prior_seen_only, on the ids the history has shown
        keep = (t["n_sa"][envs, states] > 0)[:, :, None].expand(-1, -1, n)  # [R, A, nO]
        if cfg.prior_seen_only:  # no prior mass on ids never shown, unless sized and still finding new ones
            # ... and within the vocabulary: the prior trained on tasks of at most 48 states, so its mass summed over
            # hundreds of ids not yet shown would be an extrapolation
            open_ = still_discovering(t["r_count"], t["discovered_at"], t["sized"]) & (n <= cfg.num_observations)
            keep = keep & (self.shown(t, envs) | open_[envs][:, None])[:, None, :]
        if cfg.prior_off_terminal:  # no mass on ids an episode has ended in (prior_off_terminal)
            keep = keep & ~t["terminal"][envs][:, None, :]
        g = torch.zeros(keep.shape, dtype=t["pseudo"].dtype, device=envs.device)
        live = torch.nonzero(keep.flatten(1).any(-1))[:, 0]  # rows with something to compute
        if len(live):
            arrival = relative_arrival(t["arrival_sum"], t["arrival_n"], t["r_sq"], t["visits"].sum(-1))
            chain = cfg.prior_chain_features
            graph = history_graph(t["n_ss"], t["n_sa"], t["visits"], envs[live], states[live], chain,
                                  (t["place"], t["place_edges"]) if chain else None)
            if chain:
                t["place"], t["place_edges"] = graph[4]
            for part in prior_row_parts(len(live), n):  # bounded memory at hundreds of ids
                rows_i = live[part]
                features = transition_prior_features(t["n_ss"], t["n_sa"], t["terminal"], t["visits"], arrival,
                                                     envs[rows_i], states[rows_i], graph, chain)
                mask = keep[rows_i]
                g[rows_i] = g.new_zeros(mask.shape).masked_scatter(
                    mask, self.prior(features[mask]).to(g.dtype) * cfg.prior_weight)
        if cfg.prior_evidence:
            g *= (self.evidence_units(t, envs) / cfg.prior_weight)[:, None, :]
        t["pseudo"][envs, states] = g
        t["pseudo_total"][envs, states] = g.sum(-1)

    def q_values(self, t: dict[str, torch.Tensor], values: torch.Tensor, observations=None) -> torch.Tensor:
        """Q ``[B, S, A]`` of one backup of ``values [B, S]`` on each history's model (with ``observations [B]``:
        Q ``[B, A]`` at those only)."""
        gamma = self.config.planning_gamma
        stats = [t[k] for k in ("n_sa", "n_ss", "pseudo", "pseudo_total", "r_sum", "pseudo_reward")]
        if observations is not None:
            rows = torch.arange(len(observations), device=values.device)
            stats = [x[rows, observations][:, None] for x in stats]
        n_sa, n_ss, pseudo, pseudo_total, r_sum, p_reward = stats
        b, s, a = n_sa.shape
        n_obs = values.shape[-1]
        tried = n_sa > 0
        r_mean = r_sum / n_sa.clamp(min=1.0)
        acc = torch.bmm(n_ss.reshape(b, s * a, n_obs), values[..., None]).view(b, s, a)
        q = r_mean + gamma * acc / n_sa.clamp(min=1.0)
        acc_prior = acc + torch.bmm(pseudo.reshape(b, s * a, n_obs), values[..., None]).view(b, s, a)
        q = torch.maximum(q, r_mean + (p_reward + gamma * acc_prior) / (n_sa + pseudo_total).clamp(min=1e-300))
        level = optimism_level(t["r_max"], t["r_absmax"], self.config.planner_novelty)
        optimistic = self.config.planner_optimism * level / (1.0 - gamma)
        q = torch.where(tried, q, optimistic[:, None, None])
        return q if observations is None else q[:, 0]

    def sweep(self, t: dict[str, torch.Tensor], values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """One synchronous value-iteration sweep of ``values [B, S]`` on each history's model: the best allowed
        action's backup, 0 at terminal observations."""
        q = self.q_values(t, values).masked_fill(~allowed[:, None, :], -torch.inf)
        return q.max(-1).values.masked_fill(t["terminal"], 0.0)

    def plan(self, t: dict[str, torch.Tensor], pending: torch.Tensor, allowed: torch.Tensor) -> None:
        """``planner_sweeps`` synchronous value-iteration sweeps of the ``pending`` histories, in place."""
        v = t["values"]
        for _ in range(self.config.planner_sweeps):
            v = self.sweep(t, v, allowed)
        t["values"] = torch.where(pending[:, None], v, t["values"])

    def step(self, cache: AnyMDPAgentCache, observations: torch.Tensor, action_mask=None, policy: bool = True):
        """The state after a new row at ``observations [B]`` and, with ``policy``, the Q ``[B, A]`` there (after
        the prior's refresh and the plan of every history that made a transition since its last plan)."""
        t = self.record(cache, observations)
        if not policy:
            return None, t
        allowed = (torch.ones(len(observations), t["n_sa"].shape[2], dtype=torch.bool, device=observations.device)
                   if action_mask is None else action_mask)
        pending = t["left"] >= 0
        if bool(pending.any()):
            self.refresh_prior(t, pending)
            if self.config.prior_arrival_reward:  # the arrivals changed with the transition
                t["pseudo_reward"] = pseudo_reward(t["n_ss"], t["n_sa"], t["pseudo"], t["arrival_sum"], t["arrival_n"])
            self.plan(t, pending, allowed)
            t["left"] = torch.full_like(t["left"], -1)
        q_now = self.q_values(t, t["values"], observations)
        if self.config.planner_tail_steps:
            q_now = self.tail_q(t, observations, allowed, q_now)
        return q_now.masked_fill(~allowed, -torch.inf), t

    #: The statistics a sweep reads (:meth:`q_values`, and the terminal observations).
    SWEEP_KEYS = ("n_sa", "n_ss", "pseudo", "pseudo_total", "pseudo_reward", "r_sum", "r_max", "r_absmax", "terminal")

    def tail_q(self, t: dict[str, torch.Tensor], observations: torch.Tensor, allowed: torch.Tensor,
               q_now: torch.Tensor) -> torch.Tensor:
        """``q_now [B, A]`` with the histories in the last ``planner_tail_steps`` steps of an episode of known length
        (``h`` steps left, ``episode_cap - episode_steps``) restricted to the actions best for those steps (-inf
        elsewhere): the Q of ``h - 1`` backups from values of 0 at the episode's end, then one at the observation.
        The same backups as the stationary plan (untried pairs keep their optimism), so only what the rest of the
        episode can still give changes; among actions it values alike (nothing within reach pays, say) the
        stationary plan still chooses. Only those histories are backed up."""
        left = t["episode_cap"] - t["episode_steps"]
        rows = torch.nonzero((t["episode_cap"] > 0) & (left >= 1) & (left <= self.config.planner_tail_steps))[:, 0]
        if not len(rows):
            return q_now
        sub = {k: t[k][rows] for k in self.SWEEP_KEYS}
        ok, h = allowed[rows], left[rows]
        v = torch.zeros_like(t["values"][rows])
        for j in range(1, int(h.max())):  # v: the best return of j steps, for the histories with more than j left
            v = torch.where((j < h)[:, None], self.sweep(sub, v, ok), v)
        best = self.greedy_logits(self.q_values(sub, v, observations[rows]).masked_fill(~ok, -torch.inf)) == 0
        q_now = q_now.clone()  # among the actions best for the steps left, the stationary plan's preference
        q_now[rows] = q_now[rows].masked_fill(~best, -torch.inf)
        return q_now

    def greedy_logits(self, q: torch.Tensor) -> torch.Tensor:
        """0 on the best actions of ``q [B, A]`` (within :data:`TIE` of the largest, relative), :data:`NOT_BEST`
        elsewhere (float32)."""
        top = q.max(-1, keepdim=True).values
        best = q >= top - self.TIE * (1.0 + top.abs())
        return torch.where(best, 0.0, self.NOT_BEST).float()

    # -- the backbone interface (shared with the other backbones) ---------------------------------
    def forward(self, observations, actions, rewards, cache: AnyMDPAgentCache, action_mask=None, tags=None,
                prompts=None, recurrent: bool = False, policy: bool = True):
        """``(policy_logits, observation_logits, reward_prediction, reward_scale, cache)`` for ``[B, T]`` rows,
        stepped one row at a time (the plan is not differentiated). The observation logits are the log of each
        row's posterior-mean next-observation distribution for its own pair (uniform for a pair never tried), the
        reward prediction the pair's mean reward so far."""
        outs_pi, outs_obs, outs_rew, outs_scale = [], [], [], []
        for j in range(observations.shape[1]):
            o = observations[:, j]
            q, t = self.step(cache, o, action_mask, policy)
            b, s, a, _ = t["n_ss"].shape
            outs_pi.append(self.greedy_logits(q) if policy else torch.zeros(b, a, device=o.device))
            act = actions[:, j].clamp(min=0)
            idx = torch.arange(b, device=o.device)
            row = t["n_ss"][idx, o, act] + t["pseudo"][idx, o, act]
            total = row.sum(-1, keepdim=True)
            prob = torch.where(total > 0, row / total.clamp(min=1e-300), torch.full_like(row, 1.0 / s))
            outs_obs.append(torch.log(prob.clamp(min=1e-12)).float())
            outs_rew.append((t["r_sum"][idx, o, act] / t["n_sa"][idx, o, act].clamp(min=1.0)).float())
            outs_scale.append(reward_scale(t["r_sq"], t["r_count"]))
            t.update(after_rows(cache, o[:, None], actions[:, j:j + 1], rewards[:, j:j + 1]))
            cache = AnyMDPAgentCache(t, cache.layers)
        return (torch.stack(outs_pi, 1), torch.stack(outs_obs, 1), torch.stack(outs_rew, 1),
                torch.stack(outs_scale, 1), cache)

    def begin_row(self, cache: AnyMDPAgentCache, observations: torch.Tensor, action_mask=None, policy: bool = True):
        """Policy logits ``[B, A]`` at a new row's observations ``[B]`` and the state with the row in it
        (``policy=False``: the state only, the logits zeros)."""
        q, t = self.step(cache, observations, action_mask, policy)
        b = observations.shape[0]
        t.update(after_rows(cache, observations[:, None], torch.zeros_like(observations)[:, None],
                            torch.zeros(b, 1, device=observations.device)))
        logits = self.greedy_logits(q) if policy else torch.zeros(b, self.state_actions(cache), device=observations.device)
        return logits, AnyMDPAgentCache(t, cache.layers)

    def end_row(self, cache: AnyMDPAgentCache, actions: torch.Tensor, rewards: torch.Tensor) -> AnyMDPAgentCache:
        """The state with the current row's action (or episode-end id) and reward; the next row counts them."""
        return AnyMDPAgentCache(with_action(cache, actions, rewards), cache.layers)


# ---------------------------------------------------------------------- the model


class AnyMDPAgentPreTrainedModel(PreTrainedModel):
    config_class = AnyMDPAgentConfig
    base_model_prefix = "agent"
    supports_gradient_checkpointing = True
    main_input_name = "observations"
    _no_split_modules = ["AnyMDPAgentLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear) and not getattr(module, "prior_layer", False):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        if isinstance(module, GatedLinearAttention):
            init.copy_(module.decay.bias, module.decay_bias_init())
        if isinstance(module, InContextPlanner):
            gamma = self.config.planning_gamma
            init.constant_(module.gamma_logit, math.log(gamma / (1.0 - gamma)))
            init.zeros_(module.log_temperature)
            init.zeros_(module.optimism)
            init.zeros_(module.world_smoothing)
            init.zeros_(module.bonus_out.weight)
            init.zeros_(module.bonus_out.bias)
            init.normal_(module.bonus_in.weight, mean=0.0, std=0.5)
            if self.config.context_adaptation:
                init.zeros_(module.context.weight)
                init.zeros_(module.context.bias)
        if isinstance(module, TransitionPriorNetwork):
            module.reset_to_empirical()


class WeightsDoNotMatchConfig(ValueError):
    """The weights of a checkpoint do not cover its config (another backbone, a switched-on option)."""


#: Where each backbone lives in the model (and so in the checkpoint's weight names).
BACKBONE_MODULES = {"planning": ("planner", InContextPlanner), "sequence": ("backbone", SequenceBackbone),
                    "model_based": ("model_based", ModelBasedPlanner)}
#: The backbone whose states take any number of observation ids and actions (its module's ``SIZE_FREE``), for
#: messages and cards that have a config but no model.
BACKBONE_SIZE_FREE = next(name for name, (_, module) in BACKBONE_MODULES.items() if getattr(module, "SIZE_FREE", False))

#: Checkpoint weight names of earlier versions (sequence heads at the top level) -> today's.
LEGACY_KEY_MAPPING = {r"^(policy_head|observation_head|reward_head)\.": r"backbone.\1."}


def _ids(x, name: str) -> torch.Tensor:
    """``x`` as an int64 tensor; any integer dtype is accepted, anything else refused by name."""
    x = torch.as_tensor(x)
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {x.dtype}: pass an integer tensor")
    return x.long()


def _rows_named(bad: torch.Tensor, limit: int = 8) -> str:
    """The batch rows (histories) where ``bad [B, ...]`` holds anything, for an error message."""
    idx = torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1))[:, 0].tolist()
    return ", ".join(map(str, idx[:limit])) + (f" (+{len(idx) - limit} more)" if len(idx) > limit else "")


class AnyMDPAgentModel(AnyMDPAgentPreTrainedModel):
    """The agent: a backbone (``config.backbone``), the policy and world-model outputs, and the loss.

    Both backbones have one interface -- ``initial_cache``, ``state_observations``, ``forward`` (rows to
    policy logits, world-model outputs, reward scale and cache), ``begin_row`` and ``end_row`` (stepping)
    -- so the model has one path for either. ``forward`` processes ``[B, T]`` rows (teacher forcing,
    chunkwise-parallel) and returns the loss when ``labels`` are given; :meth:`initial_state`,
    :meth:`act` and :meth:`observe` step it one environment step at a time for deployment.
    """

    def __init__(self, config: AnyMDPAgentConfig):
        super().__init__(config)
        self._backbone_name, backbone = BACKBONE_MODULES[config.backbone]
        setattr(self, self._backbone_name, backbone(config))
        self.post_init()

    @property
    def core(self) -> InContextPlanner | SequenceBackbone | ModelBasedPlanner:
        """The backbone module (``self.planner`` or ``self.backbone``, as the weights name it)."""
        return getattr(self, self._backbone_name)

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing weights that do not cover the config.

        transformers would initialise a missing weight afresh and only log it: a ``config.json`` edited
        to the other backbone, or ``memory_decay`` switched on without its parameter, would load as a
        silently different model. Here any missing or unexpected weight (or, unless
        ``ignore_mismatched_sizes``, one of another shape) raises :class:`WeightsDoNotMatchConfig`, for every
        loader (``AutoModel`` with ``trust_remote_code`` included). Weight names of earlier versions are
        mapped (:data:`LEGACY_KEY_MAPPING`)."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["key_mapping"] = {**LEGACY_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        kinds = ["missing_keys", "unexpected_keys"] + ([] if kwargs.get("ignore_mismatched_sizes") else ["mismatched_keys"])
        problems = {k: sorted(map(str, info[k])) for k in kinds if info.get(k)}
        if problems:
            cfg = model.config
            raise WeightsDoNotMatchConfig(
                f"the weights in {pretrained_model_name_or_path} do not match its config.json (backbone="
                f"{cfg.backbone!r}, memory_decay={cfg.memory_decay}): "
                + "; ".join(f"{k.replace('_', ' ')}: {v[:6]}" + (f" (+{len(v) - 6} more)" if len(v) > 6 else "")
                            for k, v in problems.items())
                + ". The checkpoint was written by another configuration: load it with the config.json it was saved with")
        return (model, info) if want_info else model

    # -- state ------------------------------------------------------------------------------------
    @property
    def size_free(self) -> bool:
        """Whether a state may hold any number of observation ids and actions (the ``model_based`` backbone: its
        statistics are per id and pair and its prior is one network for every id and action). The other
        backbones embed ids, so their states hold at most ``config.num_observations`` ids and exactly
        ``config.num_actions`` actions."""
        return getattr(self.core, "SIZE_FREE", False)

    def state_actions(self, state: AnyMDPAgentCache) -> int:
        """Actions the state was started with (``config.num_actions`` unless ``initial_state(num_actions=...)``)."""
        return self.core.state_actions(state) if self.size_free else self.config.num_actions

    def initial_state(self, batch_size: int, num_observations: int | None = None, device=None,
                      num_actions: int | None = None) -> AnyMDPAgentCache:
        """A fresh state for ``batch_size`` histories, with statistics for observation ids
        ``0..num_observations-1`` and actions ``0..num_actions-1`` (the config's sizes by default).

        The statistics-based backbones may hold fewer ids than the vocabulary (exact when the environments use
        no others, and cheaper). A :attr:`size_free` model (the ``model_based`` backbone, the bundled default)
        also takes more ids and more actions than its config names: a 500-state, 6-action task needs only
        ``initial_state(1, num_observations=500, num_actions=6)``."""
        cfg = self.config
        for name, value in (("batch_size", batch_size), ("num_observations", num_observations),
                            ("num_actions", num_actions)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"initial_state: {name} must be a positive integer, got {value!r}")
        # numpy integers (a gymnasium space's ``n``) are taken as the plain ints they are
        batch_size = int(batch_size)
        num_observations = None if num_observations is None else int(num_observations)
        num_actions = None if num_actions is None else int(num_actions)
        n_obs = cfg.num_observations if num_observations is None else num_observations
        if self.size_free:
            return self.core.initial_cache(batch_size, n_obs, device or self.device, num_actions,
                                           sized=num_observations is not None)
        if n_obs > cfg.num_observations:
            raise ValueError(f"num_observations={n_obs} exceeds the model's vocabulary of {cfg.num_observations} "
                             f"observation ids (only the {BACKBONE_SIZE_FREE} backbone takes more)")
        if num_actions is not None and num_actions != cfg.num_actions:
            raise ValueError(f"num_actions={num_actions}: a {cfg.backbone!r} agent's state has its config's "
                             f"{cfg.num_actions} actions (mask the ones a task lacks with action_mask; only the "
                             f"{BACKBONE_SIZE_FREE} backbone takes another number)")
        return self.core.initial_cache(batch_size, n_obs, device or self.device)

    # -- checks -----------------------------------------------------------------------------------
    def _check_batch(self, n: int, cache: AnyMDPAgentCache, what: str) -> None:
        if n != cache.batch_size:
            raise ValueError(f"{what} hold {n} histories but the state holds {cache.batch_size}: pass one row per "
                             f"history of the state (initial_state(batch_size={n}) for a new batch)")

    def _check_inputs(self, observations, actions, rewards, tags, prompts, labels, action_mask, cache):
        cfg = self.config
        if observations.dim() != 2 or actions.shape != observations.shape or rewards.shape != observations.shape:
            raise ValueError("observations, actions and rewards must all have shape [batch, rows]; got "
                             f"{tuple(observations.shape)}, {tuple(actions.shape)}, {tuple(rewards.shape)}")
        self._check_batch(observations.shape[0], cache, "observations")
        self._check_observations(observations, cache)
        self._check_actions(actions, cache)
        self._check_rewards(rewards)
        if tags.shape != observations.shape:
            raise ValueError(f"tags must have shape {tuple(observations.shape)}, got {tuple(tags.shape)}")
        if tags.numel() and (tags.min() < 0 or tags.max() >= cfg.num_tags):
            raise ValueError(f"tag ids must lie in 0..{cfg.num_tags - 1}")
        if prompts.shape != (observations.shape[0],):
            raise ValueError(f"prompts must have shape [{observations.shape[0]}] (one per history), "
                             f"got {tuple(prompts.shape)}")
        if prompts.numel() and (prompts.min() < 0 or prompts.max() >= cfg.num_prompts):
            raise ValueError(f"prompt ids must lie in 0..{cfg.num_prompts - 1}")
        if labels is not None:
            if labels.shape != observations.shape:
                raise ValueError(f"labels must have shape {tuple(observations.shape)}, got {tuple(labels.shape)}")
            lab = labels[labels != IGNORE_INDEX]
            n_act = self.state_actions(cache)
            if lab.numel() and (lab.min() < 0 or lab.max() >= n_act):
                raise ValueError(f"labels must be actions 0..{n_act - 1} or {IGNORE_INDEX}")
        self._check_action_mask(action_mask, cache)

    def _check_action_mask(self, action_mask, cache: AnyMDPAgentCache) -> None:
        if action_mask is None:
            return
        if action_mask.dtype != torch.bool:
            raise TypeError(f"action_mask must be a bool tensor (True = allowed), got dtype {action_mask.dtype}")
        batch, n_act = cache.batch_size, self.state_actions(cache)
        if action_mask.shape != (batch, n_act):
            raise ValueError(f"action_mask must have shape [{batch}, {n_act}] (the state's histories and actions), "
                             f"got {tuple(action_mask.shape)}")
        empty = ~action_mask.any(-1)
        if empty.any():
            raise ValueError(f"action_mask allows no action in histories {_rows_named(empty)}: every history needs "
                             "at least one allowed action")

    def _check_observations(self, observations: torch.Tensor, cache: AnyMDPAgentCache) -> None:
        n_obs = self.core.state_observations(cache)
        bad = (observations < 0) | (observations >= n_obs)
        if bad.any():
            if n_obs < self.config.num_observations or self.size_free:
                where = (f"the state's {n_obs} ids (initial_state(num_observations={n_obs})): start the state "
                         "with enough ids for the environments")
            else:
                where = (f"the vocabulary of {n_obs} ids (config.num_observations): use a model with a larger "
                         "vocabulary")
            raise ValueError(f"observation id {int(observations[bad][0])} is outside {where}")

    def _check_actions(self, actions: torch.Tensor, cache: AnyMDPAgentCache) -> None:
        n_act = self.state_actions(cache)
        bad = (actions >= n_act) | (actions < END_TRUNCATED)
        if bad.any():
            fix = ("start the state with initial_state(num_actions=...) for the task's actions" if self.size_free
                   else "the task has more actions than the model")
            raise ValueError(f"action {int(actions[bad][0])} is outside 0..{n_act - 1} (or the episode-end ids "
                             f"{END_TERMINATED}, {END_TRUNCATED}): {fix}")

    @staticmethod
    def _check_rewards(rewards: torch.Tensor) -> None:
        if rewards.dtype == torch.bool or rewards.is_complex():
            raise TypeError(f"rewards must be real numbers, got dtype {rewards.dtype}")
        bad = ~torch.isfinite(rewards)
        if bad.any():
            raise ValueError(f"rewards must be finite: histories {_rows_named(bad)} hold NaN or infinite rewards; "
                             "fix the environment or the data (the state would plan with them from then on)")

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        observations: torch.LongTensor,
        actions: torch.LongTensor,
        rewards: torch.FloatTensor,
        tags: torch.LongTensor | None = None,
        prompts: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        action_mask: torch.BoolTensor | None = None,
        cache: AnyMDPAgentCache | None = None,
        recurrent: bool = False,
        return_dict: bool = True,
        **kwargs,
    ) -> AnyMDPAgentOutput:
        """Teacher-forced pass over ``[B, T]`` rows (see the module docstring for the fields).

        Ids may have any integer dtype (they are read as int64). ``cache`` continues earlier rows
        (truncated back-propagation: pass ``output.cache.detach()``); ``recurrent=True`` runs the
        sequence backbone token by token (same numbers, for checks).
        """
        cfg = self.config
        observations, actions = _ids(observations, "observations"), _ids(actions, "actions")
        rewards = torch.as_tensor(rewards)
        if observations.dim() != 2:
            raise ValueError(f"observations must have shape [batch, rows], got {tuple(observations.shape)}")
        b = observations.shape[0]
        dev = observations.device
        cache = cache if cache is not None else self.initial_state(b, device=dev)
        tags = _ids(tags, "tags") if tags is not None else torch.full_like(observations, UNKNOWN_TAG)
        prompts = _ids(prompts, "prompts") if prompts is not None else torch.zeros(b, dtype=torch.long, device=dev)
        labels = _ids(labels, "labels") if labels is not None else None
        self._check_inputs(observations, actions, rewards, tags, prompts, labels, action_mask, cache)
        rewards = rewards.float()
        start_step = cache.step
        pi, obs_logits, rew_pred, scale, new_cache = self.core(observations, actions, rewards, cache, action_mask,
                                                               tags=tags, prompts=prompts, recurrent=recurrent)
        if action_mask is not None:
            pi = pi.masked_fill(~action_mask[:, None, :], torch.finfo(pi.dtype).min)
        out = AnyMDPAgentOutput(policy_logits=pi, observation_logits=obs_logits, reward_prediction=rew_pred,
                                cache=new_cache)
        if labels is not None:
            self._loss(out, observations, actions, rewards, labels, scale, start_step)
        return out

    def _loss(self, out, observations, actions, rewards, labels, scale, start_step):
        """``w_pi CE(policy) + w_s CE(next observation) + w_r MSE(reward)`` with the context warm-up."""
        cfg = self.config
        b, t = labels.shape
        pos = start_step[:, None] + torch.arange(t, device=labels.device)[None, :]
        if cfg.context_warmup > 0:
            frac = (pos.float() / cfg.context_warmup).clamp(max=1.0)
            weight = cfg.warmup_start + (1.0 - cfg.warmup_start) * frac
        else:
            weight = torch.ones(b, t, device=labels.device)
        has_label = labels != IGNORE_INDEX
        ce = F.cross_entropy(out.policy_logits.reshape(b * t, -1).float(), labels.clamp(min=0).reshape(-1),
                             reduction="none").view(b, t)
        policy_loss = (ce * weight * has_label).sum() / (weight * has_label).sum().clamp(min=1e-8)
        # World model: rows with a real action whose next row is in this segment.
        real = actions >= 0
        target_next = torch.cat([observations[:, 1:], torch.zeros_like(observations[:, :1])], 1)
        has_next = real.clone()
        has_next[:, -1] = False
        ce_obs = F.cross_entropy(out.observation_logits.reshape(b * t, -1).float(), target_next.reshape(-1),
                                 reduction="none").view(b, t)
        obs_loss = (ce_obs * weight * has_next).sum() / (weight * has_next).sum().clamp(min=1e-8)
        err = (out.reward_prediction.float() - rewards) / scale
        rew_loss = (err.pow(2) * weight * real).sum() / (weight * real).sum().clamp(min=1e-8)
        out.policy_loss, out.observation_loss, out.reward_loss = policy_loss, obs_loss, rew_loss
        out.loss = (cfg.policy_loss_weight * policy_loss + cfg.observation_loss_weight * obs_loss
                    + cfg.reward_loss_weight * rew_loss)

    # -- stepping (deployment) --------------------------------------------------------------------
    @torch.no_grad()
    def _begin_row(self, state: AnyMDPAgentCache, observations: torch.Tensor, action_mask, policy: bool = True):
        """Feed the observation token of a new row; returns the (masked) policy logits and the state."""
        obs = observations.view(-1)
        self._check_batch(obs.shape[0], state, "observations")
        self._check_observations(obs, state)
        self._check_action_mask(action_mask, state)
        logits, state = self.core.begin_row(state, obs, action_mask, policy=policy)
        if action_mask is not None:
            logits = logits.masked_fill(~action_mask, torch.finfo(logits.dtype).min)
        return logits, state

    @torch.no_grad()
    def _end_row(self, state: AnyMDPAgentCache, actions: torch.Tensor, rewards: torch.Tensor):
        """Feed the action token of the current row (an action, or an episode-end id) and its reward."""
        actions = actions.view(-1)
        self._check_actions(actions, state)
        return self.core.end_row(state, actions, rewards.float().view(-1))

    def sampling_temperature(self, steps) -> torch.Tensor:
        """The checkpoint's sampling temperature after ``steps`` environment steps (:func:`sampling_temperature`
        with the config's ``temperature_start``, ``temperature_end`` and ``temperature_decay_steps``)."""
        cfg = self.config
        return sampling_temperature(cfg.temperature_start, cfg.temperature_end, cfg.temperature_decay_steps, steps)

    @torch.no_grad()
    def act(self, state: AnyMDPAgentCache, observations: torch.LongTensor, action_mask: torch.BoolTensor | None = None,
            temperature: float | torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Actions ``[B]`` at ``observations`` (one new row per history); returns ``(actions, logits, state)``.

        ``temperature`` (>= 0) divides the logits before sampling, per history if a tensor; 0 is greedy.
        ``None`` (the default) follows the checkpoint's own schedule (:meth:`sampling_temperature`) at each
        history's environment steps so far. The row is completed by :meth:`observe`.
        """
        observations = _ids(observations, "observations").reshape(-1)
        b = observations.shape[0]
        if temperature is None:
            self._check_batch(b, state, "observations")
            # environment steps so far: the transitions counted, plus the pending one of the last row
            steps = state.r_count.detach().cpu() + (state.last_action.detach().cpu() >= 0).float()
            temperature = self.sampling_temperature(steps).float()
        temp = torch.as_tensor(temperature, dtype=torch.float32, device=observations.device).reshape(-1)
        if temp.numel() not in (1, b):
            raise ValueError(f"temperature must be a number or one per history ({b}), got {temp.numel()} values")
        if not (torch.isfinite(temp) & (temp >= 0)).all():
            raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {temp.tolist()[:8]}")
        logits, state = self._begin_row(state, observations, action_mask)
        temp = temp.to(logits.dtype).expand(b)
        probs = torch.softmax(logits / temp.clamp(min=1e-6)[:, None], -1)
        sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
        actions = torch.where(temp <= 0, logits.argmax(-1), sampled)
        return actions, logits, state

    @torch.no_grad()
    def observe(self, state: AnyMDPAgentCache, actions: torch.LongTensor, rewards: torch.Tensor,
                next_observations: torch.LongTensor, terminated: torch.Tensor, truncated: torch.Tensor,
                action_mask: torch.BoolTensor | None = None) -> AnyMDPAgentCache:
        """Complete the row :meth:`act` began; where an episode ended, add its episode-end row.

        Every argument holds one entry per history of ``state``; rewards must be finite."""
        actions = _ids(actions, "actions").reshape(-1)
        next_observations = _ids(next_observations, "next_observations").reshape(-1)
        rewards = torch.as_tensor(rewards, device=actions.device).reshape(-1)
        terminated = torch.as_tensor(terminated, device=actions.device).reshape(-1).bool()
        truncated = torch.as_tensor(truncated, device=actions.device).reshape(-1).bool()
        for name, x in (("actions", actions), ("rewards", rewards), ("next_observations", next_observations),
                        ("terminated", terminated), ("truncated", truncated)):
            self._check_batch(x.shape[0], state, name)
        self._check_rewards(rewards)
        state = self._end_row(state, actions, rewards)
        done = terminated | truncated
        if not done.any():
            return state
        idx = torch.nonzero(done)[:, 0]
        end = torch.where(terminated, END_TERMINATED, END_TRUNCATED)[idx]
        sub = state.index(idx)
        # The closing row's policy is never read: the planning backbone only updates its memory there.
        _, sub = self._begin_row(sub, next_observations[idx], None if action_mask is None else action_mask[idx],
                                 policy=False)
        sub = self._end_row(sub, end, torch.zeros(len(idx), device=end.device))
        merged = {k: v.clone() for k, v in state.tensors.items()}
        for k, v in sub.tensors.items():
            merged[k][idx] = v
        layers = [x.clone() for x in state.layers]
        for x, y in zip(layers, sub.layers):
            x[idx] = y
        return AnyMDPAgentCache(merged, layers)


AnyMDPAgentConfig.register_for_auto_class()
AnyMDPAgentModel.register_for_auto_class("AutoModel")

__all__ = ["AnyMDPAgentCache", "AnyMDPAgentModel", "AnyMDPAgentOutput", "AnyMDPAgentPreTrainedModel",
           "END_TERMINATED", "END_TRUNCATED", "IGNORE_INDEX", "WeightsDoNotMatchConfig"]

"""``AnyMDPAgentConfig``: the one source of truth for the in-context RL agent's shape and loss, and the
contract between the corpus and the model (episode-end action ids, label values, tags, prompts).

Self-contained (imports only the standard library and ``transformers``) so that it travels with checkpoints for
``AutoConfig.from_pretrained(path, trust_remote_code=True)``; the corpus builder and the training
script import the contract from here, so it is written down once.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

BACKBONES = ("planning", "sequence", "model_based")

# ---------------------------------------------------------------------- the corpus/model contract

#: Action id of the extra row that closes an episode which *terminated* in the row's observation.
END_TERMINATED = -1
#: Action id of the extra row that closes an episode cut by the time limit.
END_TRUNCATED = -2
#: Label value of a corpus row without a target (the rows that close episodes).
NO_LABEL = -1
#: Label value the model's loss ignores (corpus rows with :data:`NO_LABEL` become this in training).
IGNORE_INDEX = -100

#: Behaviour tags of the corpus, by id; the deployed agent is told ``unknown``.
TAGS = ("opt", "explore", "qlearn", "random", "unknown")
UNKNOWN_TAG = TAGS.index("unknown")

#: The kinds of step-wise label a corpus can hold (column ``label_<kind>``).
LABEL_KINDS = ("oracle", "planner")
#: A training target: one label kind, or ``mix`` (one kind drawn per sequence).
LABEL_TARGETS = LABEL_KINDS + ("mix",)
#: Prompt id of each oracle discount (the reference's earlier data mixed these); the planner label has its own.
ORACLE_PROMPTS = {0.994: 0, 0.93: 1, 0.5: 2, 0.0: 3}
PLANNER_PROMPT = 4
NUM_PROMPTS = 5


def label_kinds(target: str) -> tuple[str, ...]:
    """The label kinds a training target draws from: every kind for ``mix``, else the one it names."""
    if target not in LABEL_TARGETS:
        raise ValueError(f"label must be {', '.join(LABEL_TARGETS[:-1])} or {LABEL_TARGETS[-1]}, got {target!r}")
    return LABEL_KINDS if target == "mix" else (target,)


def label_prompt(kind: str, oracle_prompt: int) -> int:
    """The prompt of a sequence labelled by ``kind``: the planner's own, or the oracle's (its discount's id)."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    return PLANNER_PROMPT if kind == "planner" else int(oracle_prompt)


class AnyMDPAgentConfig(PreTrainedConfig):
    r"""Configuration of :class:`AnyMDPAgentModel`.

    Vocabulary (one model serves every task that fits):
        num_observations: observation ids ``0..num_observations-1``.
        num_actions: actions ``0..num_actions-1``; a task with fewer actions masks the rest.
        (For the ``model_based`` backbone both are only the default sizes of ``initial_state``, which takes
        any: nothing in it is sized by the vocabulary.)
        num_tags: behaviour tags (:data:`TAGS`: ``opt, explore, qlearn, random, unknown``; the agent is
            told the last, ``unknown``).
        num_prompts: prompts naming the label kind / oracle discount of a sequence (:data:`ORACLE_PROMPTS`
            and :data:`PLANNER_PROMPT`).

    Backbone:
        backbone: ``"model_based"`` (the bundled default: the count-based model-based planner -- exact
            statistics, value iteration warm-started from the last values, optimism for untried pairs -- with a
            learned transition prior that reads the history), ``"planning"`` (in-context (observation, action)
            statistics memory and learned differentiable value iteration) or ``"sequence"`` (gated linear
            attention stack).
        hidden_size, num_hidden_layers, num_heads, intermediate_size: the sequence backbone's width,
            depth, heads and MLP width (the planning backbone's token encoder uses ``hidden_size``).
        chunk_size: chunk length of the chunkwise-parallel form (training); the recurrent form steps
            one token at a time and agrees with it to floating-point tolerance.
        use_flash_linear_attention: on CUDA, run the sequence backbone's chunked recurrence with
            flash-linear-attention's Triton kernel (``fla.ops.simple_gla.chunk_simple_gla``) when that
            package is installed; the pure-PyTorch form otherwise (and always on CPU).
        observation_statistics: give the sequence backbone the planning backbone's simplest statistics as extra
            input features: per action at the current observation, the visit count and the mean reward (an exact
            memory of counts and reward sums per (observation, action)). Off by default (the generic backbone).
        statistics_discount: discount of the discounted-return statistic of ``observation_statistics`` (0.9:
            a horizon of about ten steps).
        statistics_lookahead: with ``observation_statistics``, also keep next-observation counts and give, per
            action, the empirical mean of the next observations' best mean discounted return (a one-step
            lookahead on those returns). Off by default.
        planning_steps: value-iteration layers of the planning backbone.
        planning_gamma: initial discount of those layers (learned).
        bonus_hidden: width of the learned exploration-bonus network.
        carry_values: start value iteration from the values of the last row of the previous chunk
            instead of 0. Off by default: measured on 32 validation tasks (16 states, 2,000 steps), the
            untrained planner scores AUC 0.69 from 0 and 0.61 carrying, because optimism that the
            last chunk has since disproved survives the sweeps.
        memory_decay: give the statistics memory a learned forgetting rate (one decay factor per row,
            applied to the counts, reward sums and next-observation counts, as in gated linear attention).
            Initialised to a decay of exactly 1.0, where the model is the exact-statistics planner. Off by
            default (no extra parameter; checkpoints without it load unchanged).
        context_adaptation: a small learned head reads a summary of the whole history (steps and
            episodes so far, reward sparsity, mean episode length, share of tried pairs, largest reward)
            and adjusts the discount, the optimism for untried pairs and the temperature per row, so one
            agent can choose its horizon and exploration per task. Zero-initialised: at first it is the
            fixed-setting planner. Off by default (checkpoints without it load unchanged).

    Model-based backbone (``backbone="model_based"``; its discount is ``planning_gamma``, fixed):
        planner_sweeps: value-iteration sweeps after every transition, warm-started from the previous values.
        planner_optimism: an untried pair is worth ``planner_optimism * level / (1 - planning_gamma)``, with the
            optimism level ``max(r_max, 0)`` (``r_max``: the largest reward seen).
        planner_novelty: with ``d > 0`` the optimism level is at least ``d * m`` (``m``: the largest reward
            magnitude seen, 1 while every reward seen is 0), so an untried pair stays worth more than a tried one
            while no positive reward has been seen: the plan heads for untried pairs instead of walking at
            random (sparse rewards), or of ending episodes for a reward of 0 when every reward so far was a cost.
            Once the largest reward exceeds ``d * m`` it changes nothing. 0 (the default): the classic planner.
        planner_tail_steps: with ``k > 0``, in the last ``k`` steps of an episode the agent plans for the steps
            left: ``h`` backups from values of 0 at the episode's end, so it takes what the rest of the episode can
            still give; among actions that plan values alike, the stationary plan chooses. The episode's length is
            learnt from the history: the longest episode that ended by truncation (none yet: no change). Untried
            pairs keep their optimism. 0 (the default): the stationary plan at every step.
        prior_hidden: width of the transition prior network (two tanh layers).
        prior_weight: the prior's pseudo-counts are multiplied by this in the posterior-mean model (1: the
            calibrated posterior the prior is trained for; more: more weight on the prior, more retrying of pairs
            whose few visits landed badly).
        prior_evidence: each history weighs the prior by what its own transitions say of it (empirical Bayes):
            every transition from a tried pair adds, for each weight ``w`` of 1/16, 1/8, 1/4, 1/2 and 1
            (``EVIDENCE_WEIGHTS`` in the model), the log-probability that the posterior-mean model with the
            network's pseudo-counts times ``w`` gave it before the step (1: the calibrated posterior the prior is
            trained for), and the plan's pseudo-counts at the ids the history has shown are ``prior_weight`` times the
            best ``w`` (ties: the largest). At ids not shown yet (states it may still reach) they keep
            ``prior_weight``, so a prior that a history's transitions contradict stops pulling it back to what it
            knows while still pulling it on to what it has not seen. Off by default (always ``prior_weight``).
        prior_off_terminal: no prior mass on ids where an episode has ended (terminated). A terminal id is worth 0
            in the plan, and the reward its arrival pays sits in the mean reward of the pairs that reached it; prior
            mass on it from any other pair would read as a way to end the episode for nothing, which makes moves that
            stay alive look better than they are on tasks whose episodes end in costly pitfalls. The empirical counts
            still carry every arrival seen. Off by default.
        prior_arrival_reward: a tried pair's pseudo-transitions carry the reward of arriving at their ids. Without
            it the prior moves a pair's next observations but not its reward, which stays the mean of its own visits:
            mass moved away from a costly id (a pitfall) keeps that id's cost, and mass moved onto one comes free.
            With it each pseudo-transition to ``t`` adds the pair's mean reward, minus the mean arrival reward of
            the pair's own transitions, plus ``t``'s mean arrival reward over all the history's arrivals (ids never
            arrived at add the pair's mean reward). Off by default.
        prior_seen_only: in a state started with the whole vocabulary (``initial_state`` without
            ``num_observations``), no prior mass on ids the history has never shown (arrived at or left), so ids
            beyond the environment's change nothing. A state sized to its environment
            (``initial_state(num_observations=n)``) keeps prior mass on its ids not yet shown while it is still
            finding new ones (states not yet reached: that mass is part of the prior's gain), and drops it once it
            has gone 400 transitions, or as many as it took to find the last new id, without one (the ids left are
            then taken for ids the environment never uses). A state with more ids than ``num_observations`` keeps
            mass on shown ids only: the prior trains on far fewer ids, and its mass summed over hundreds of ids not
            yet shown would be an extrapolation. Off by default (mass on every id, always).
        prior_chain_features: the prior also reads where each id lies along the history's transition graph (its
            spectral ordering: four more inputs per pair and id, the distances to the pair's outcomes and to the
            pair's own observation). Off by default, so checkpoints from before it load unchanged.
        prior_refresh: every this many transitions the prior's pseudo-counts of every pair are recomputed; in
            between, after each transition, those of the observation just left.
        prior_refresh_fraction: with ``f > 0``, every pair's are recomputed after ``max(prior_refresh, f * steps)``
            transitions (``steps``: the history's so far), so their cost per step falls as the history grows
            (what they read besides a pair's own counts settles); 0 (the default): every ``prior_refresh``.

    Sampling (the schedule this checkpoint is measured with; ``act`` uses it when no temperature is given, and
    so does the learner wrapper ``AgentLearner`` unless told otherwise):
        temperature_start, temperature_end, temperature_decay_steps: the sampling temperature falls from
            ``temperature_start`` to ``temperature_end`` over the first ``temperature_decay_steps`` environment
            steps of a history (exponentially; linearly when either end is 0, and 0 is greedy), then stays
            (1.0, 0.1, 10,000: the evaluation's reference schedule).

    Loss (``L = w_pi CE(policy) + w_s CE(next observation) + w_r MSE(reward)``):
        policy_loss_weight, observation_loss_weight, reward_loss_weight: the weights (0.8/0.1/0.1).
        context_warmup: early steps are down-weighted, linearly from ``warmup_start`` to 1 over this
            many steps (0 disables).
    """

    model_type = "anymdp_agent"

    def __init__(
        self,
        num_observations: int = 64,
        num_actions: int = 5,
        num_tags: int = len(TAGS),
        num_prompts: int = NUM_PROMPTS,
        backbone: str = "planning",
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int | None = None,
        chunk_size: int = 64,
        observation_statistics: bool = False,
        statistics_discount: float = 0.9,
        statistics_lookahead: bool = False,
        planning_steps: int = 16,
        planning_gamma: float = 0.99,
        bonus_hidden: int = 16,
        carry_values: bool = False,
        memory_decay: bool = False,
        context_adaptation: bool = False,
        use_flash_linear_attention: bool = True,
        temperature_start: float = 1.0,
        temperature_end: float = 0.1,
        temperature_decay_steps: int = 10_000,
        policy_loss_weight: float = 0.8,
        observation_loss_weight: float = 0.1,
        reward_loss_weight: float = 0.1,
        context_warmup: int = 0,
        warmup_start: float = 1e-3,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        planner_sweeps: int = 3,
        planner_optimism: float = 1.0,
        planner_novelty: float = 0.0,
        planner_tail_steps: int = 0,
        prior_hidden: int = 32,
        prior_refresh: int = 16,
        prior_refresh_fraction: float = 0.0,
        prior_weight: float = 1.0,
        prior_seen_only: bool = False,
        prior_evidence: bool = False,
        prior_off_terminal: bool = False,
        prior_arrival_reward: bool = False,
        prior_chain_features: bool = False,
        **kwargs,
    ):
        self.num_observations = num_observations
        self.num_actions = num_actions
        self.num_tags = num_tags
        self.num_prompts = num_prompts
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 2 * hidden_size
        self.chunk_size = chunk_size
        self.observation_statistics = observation_statistics
        self.statistics_discount = statistics_discount
        self.statistics_lookahead = statistics_lookahead
        self.planning_steps = planning_steps
        self.planning_gamma = planning_gamma
        self.bonus_hidden = bonus_hidden
        self.carry_values = carry_values
        self.memory_decay = memory_decay
        self.context_adaptation = context_adaptation
        self.use_flash_linear_attention = use_flash_linear_attention
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        self.temperature_decay_steps = temperature_decay_steps
        self.policy_loss_weight = policy_loss_weight
        self.observation_loss_weight = observation_loss_weight
        self.reward_loss_weight = reward_loss_weight
        self.context_warmup = context_warmup
        self.warmup_start = warmup_start
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.planner_sweeps = planner_sweeps
        self.planner_optimism = planner_optimism
        self.planner_novelty = planner_novelty
        self.planner_tail_steps = planner_tail_steps
        self.prior_hidden = prior_hidden
        self.prior_refresh = prior_refresh
        self.prior_refresh_fraction = prior_refresh_fraction
        self.prior_weight = prior_weight
        self.prior_seen_only = prior_seen_only
        self.prior_evidence = prior_evidence
        self.prior_off_terminal = prior_off_terminal
        self.prior_arrival_reward = prior_arrival_reward
        self.prior_chain_features = prior_chain_features
        self.validate_settings()
        super().__init__(**kwargs)

    def validate_settings(self) -> None:
        """Raise ``ValueError`` naming the first setting the model cannot be built with."""
        positive = ("num_observations", "num_actions", "num_tags", "num_prompts", "hidden_size", "num_hidden_layers",
                    "num_heads", "intermediate_size", "chunk_size", "planning_steps", "bonus_hidden", "planner_sweeps",
                    "prior_refresh", "prior_hidden")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AnyMDPAgentConfig.{name} must be a positive integer, got {value!r}")
        tail = self.planner_tail_steps
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"AnyMDPAgentConfig.planner_tail_steps must be an integer >= 0, got {tail!r}")
        for name in ("planner_optimism", "planner_novelty", "prior_refresh_fraction", "prior_weight"):
            o = getattr(self, name)
            if isinstance(o, bool) or not isinstance(o, (int, float)) or not math.isfinite(o) or o < 0:
                raise ValueError(f"AnyMDPAgentConfig.{name} must be a finite number >= 0, got {o!r}")
        if self.prior_evidence is True and self.prior_weight == 0:
            raise ValueError("AnyMDPAgentConfig.prior_evidence weighs the prior by its evidence, but prior_weight is 0 "
                             "(no prior): set prior_weight > 0 or prior_evidence=False")
        if self.num_tags <= UNKNOWN_TAG:
            raise ValueError(f"AnyMDPAgentConfig.num_tags must be > {UNKNOWN_TAG} (the 'unknown' tag the agent is "
                             f"told), got {self.num_tags}")
        if self.num_actions < 2:
            raise ValueError(f"AnyMDPAgentConfig.num_actions must be >= 2, got {self.num_actions}")
        for name in ("carry_values", "memory_decay", "context_adaptation", "use_flash_linear_attention",
                     "observation_statistics", "statistics_lookahead", "prior_seen_only", "prior_evidence",
                     "prior_off_terminal", "prior_arrival_reward", "prior_chain_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AnyMDPAgentConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"AnyMDPAgentConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        for name in ("planning_gamma", "statistics_discount"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"AnyMDPAgentConfig.{name} must lie in (0, 1), got {value!r}")
        for name in ("policy_loss_weight", "observation_loss_weight", "reward_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"AnyMDPAgentConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature_start", "temperature_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"AnyMDPAgentConfig.{name} must be a finite number >= 0 (0 is greedy), got {value!r}")
        d = self.temperature_decay_steps
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"AnyMDPAgentConfig.temperature_decay_steps must be an integer >= 0, got {d!r}")
        if self.context_warmup < 0 or not 0.0 < self.warmup_start <= 1.0:
            raise ValueError("context_warmup must be >= 0 and warmup_start in (0, 1]")


__all__ = ["AnyMDPAgentConfig", "BACKBONES", "END_TERMINATED", "END_TRUNCATED", "IGNORE_INDEX", "LABEL_KINDS",
           "LABEL_TARGETS", "NO_LABEL", "NUM_PROMPTS", "ORACLE_PROMPTS", "PLANNER_PROMPT", "TAGS", "UNKNOWN_TAG",
           "label_kinds", "label_prompt"]

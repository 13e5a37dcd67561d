"""The AnyMDP task sampler: banded transitions, composite rewards, value-iteration calibration, quality filter.

Documented formula by formula in ``docs/anymdp.md`` (after Wang et al., arXiv 2502.02869; the reference is the
``xenoverse`` package). Every random number comes from one ``numpy.random.default_rng(seed)``, and
rejected draws are redrawn from the same stream, so one seed names exactly one accepted task, bit
for bit, in every process. Differences from the reference, on purpose:

- the episode cap ``max_steps`` is an integer (the reference draws a float);
- values are solved exactly (policy iteration) instead of by approximate value iteration;
- the reference reseeds numpy's global generator; nothing here touches global random state.

Kept from the reference because the acceptance rates depend on it: the non-terminal chain end has
no self-loop, and the pitfall calibration compares against ``min(r_term)`` over *all* states (so a
task without pitfalls calibrates only if every state is worth at least 1).
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Generator, Sequence

import numpy as np

from .solvers import optimal_q, policy_evaluation, uniform_policy
from .task import Task

#: Bumped whenever a seed would name a different task; stored in every task and corpus row.
GENERATOR_VERSION = "anymdp-1"

#: Reward parts of the composite reward (terminal rewards are always calibrated).
REWARD_PARTS = ("potential", "position", "state_action", "step")

CALIBRATION_GAMMA = 0.99
CALIBRATION_ROUNDS = 5
MIN_STATES = 8
MIN_ACTIONS = 2
_EPS = 1e-10
_SOLVE_BYTES = 4 << 20  # a batch of solves holds at most this much transition tensor


def check_seed(seed) -> int:
    """A task seed must be a non-negative integer; returns it as ``int``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}: task seeds start at 0")
    return int(seed)


def check_sizes(n_states, n_actions, min_states=None, minimum=MIN_STATES) -> None:
    """Raise a clear error for state/action counts a sampler cannot draw from."""
    for name, value in (("n_states", n_states), ("n_actions", n_actions)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if n_states < minimum:
        raise ValueError(f"n_states={n_states} is too small: an MDP needs at least {minimum} states "
                         "(use sample_bandit_task for a one-state bandit)")
    if n_actions < MIN_ACTIONS:
        raise ValueError(f"n_actions={n_actions} is too small: a task needs at least {MIN_ACTIONS} actions")
    if min_states is not None:
        if isinstance(min_states, bool) or not isinstance(min_states, numbers.Integral):
            raise TypeError(f"min_states must be an integer or None, got {min_states!r}")
        if not minimum <= min_states <= n_states:
            raise ValueError(f"min_states={min_states} must lie in [{minimum}, n_states={n_states}]")


def episode_cap(rng: np.random.Generator, n: int) -> int:
    """Draw the episode cap: an integer in ``[max(4n, 100), max(min(8n, 500), lower + 1))``."""
    lower = max(4 * n, 100)
    upper = max(min(8 * n, 500), lower + 1)
    return int(rng.integers(lower, upper))


def sample_anymdp_task(
    n_states: int,
    n_actions: int = 5,
    *,
    seed: int,
    min_states: int | None = None,
    forward_reach: int | None = None,
    backward_reach: int | None = None,
    reward_parts: Collection[str] = REWARD_PARTS,
    deterministic: bool = False,
    max_draws: int = 10_000,
) -> Task:
    """Draw the accepted AnyMDP task named by ``seed``.

    Args:
        n_states: size of the observation-id space (``>= 8``).
        n_actions: number of actions (``>= 2``).
        seed: non-negative task seed; the same seed always gives the same task.
        min_states: if given, the number of active states is drawn uniformly in
            ``[min_states, n_states]``; otherwise every id is an active state.
        forward_reach, backward_reach: band reach ``bp`` / ``bm`` (defaults ``n//4 + 1`` and
            ``n//2 + 1``).
        reward_parts: which parts of the composite reward to use, a subset of
            :data:`REWARD_PARTS` (terminal rewards are always calibrated).
        deterministic: every action moves surely to the most likely target of its banded row (the same
            chain, bands and centres; rewards, calibration and the quality filter then see those moves).
            It draws nothing more, but the filter accepts other draws, so a seed names another task.
        max_draws: give up (``RuntimeError``) after this many rejected draws.
    """
    return sample_anymdp_tasks([seed], n_states, n_actions, min_states=min_states, forward_reach=forward_reach,
                               backward_reach=backward_reach, reward_parts=reward_parts,
                               deterministic=deterministic, max_draws=max_draws)[0]


def sample_anymdp_tasks(
    seeds: Sequence[int],
    n_states: int | Sequence[int],
    n_actions: int | Sequence[int] = 5,
    **kwargs,
) -> list[Task]:
    """The tasks ``[sample_anymdp_task(n, na, seed=s, **kwargs) for s, n, na in ...]``, bit for bit, drawn
    together: every seed's draws run in lockstep, and the exact solves that calibrate and filter them
    are batched over all seeds waiting for one (one policy iteration for many candidates instead of
    one each). ``n_states`` / ``n_actions`` are one size for all seeds or one per seed."""
    seeds = list(seeds)
    sizes = []
    for name, value in (("n_states", n_states), ("n_actions", n_actions)):
        values = list(value) if isinstance(value, (list, tuple, range, np.ndarray)) else [value] * len(seeds)
        if len(values) != len(seeds):
            raise ValueError(f"{name} must be one integer or one per seed ({len(seeds)}), got {len(values)}")
        sizes.append(values)
    draws = [_draw_task(n, na, seed=s, **kwargs) for s, n, na in zip(seeds, *sizes)]
    return _solve_in_lockstep(draws)


def _solve_in_lockstep(draws: list[Generator]) -> list:
    """Run sampling procedures that yield solve requests ``(kind, transition [n, na, n], reward, gamma)``
    and receive the solution; requests of one kind, shape and discount are solved as one batch."""
    results = [None] * len(draws)
    waiting = {}

    def advance(i, answer):
        try:
            waiting[i] = draws[i].send(answer)
        except StopIteration as done:
            results[i] = done.value

    for i in range(len(draws)):
        advance(i, None)
    while waiting:
        groups = {}
        for i, (kind, transition, reward, gamma) in waiting.items():
            groups.setdefault((kind, transition.shape, gamma), []).append(i)
        requests, waiting = waiting, {}
        for (kind, shape, gamma), members in groups.items():
            size = max(1, _SOLVE_BYTES // (8 * int(np.prod(shape))))  # batches that stay in cache
            for lo in range(0, len(members), size):
                part = members[lo:lo + size]
                t = np.stack([requests[i][1] for i in part])
                r = np.stack([requests[i][2] for i in part])
                q = optimal_q(t, r, gamma) if kind == "optimal" else policy_evaluation(t, r, uniform_policy(t), gamma)
                for i, answer in zip(part, q):
                    advance(i, answer)
    return results


def _draw_task(n_states, n_actions, *, seed, min_states=None, forward_reach=None, backward_reach=None,
               reward_parts=REWARD_PARTS, deterministic=False, max_draws=10_000) -> Generator:
    """The sampling procedure of one seed, as a generator of solve requests returning the ``Task``."""
    check_sizes(n_states, n_actions, min_states)
    seed = check_seed(seed)
    parts = frozenset(reward_parts)
    unknown = parts - set(REWARD_PARTS)
    if unknown:
        raise ValueError(f"unknown reward parts {sorted(unknown)}; choose from {list(REWARD_PARTS)}")
    for name, reach in (("forward_reach", forward_reach), ("backward_reach", backward_reach)):
        if reach is not None and (not isinstance(reach, numbers.Integral) or reach < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {reach!r}")
    if not isinstance(deterministic, (bool, np.bool_)):
        raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
    return _draws(n_states, n_actions, seed, min_states, forward_reach, backward_reach, parts, bool(deterministic),
                  max_draws)


def _draws(n_states, n_actions, seed, min_states, forward_reach, backward_reach, parts, deterministic,
           max_draws) -> Generator:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_states, n_states + 1)) if min_states is not None else n_states
    mapping = rng.permutation(n_states)[:n]
    max_steps = episode_cap(rng, n)
    bp = n // 4 + 1 if forward_reach is None else int(forward_reach)
    bm = n // 2 + 1 if backward_reach is None else int(backward_reach)

    for draw in range(1, max_draws + 1):
        structure = _sample_structure(rng, n, n_actions, bp, bm)
        if deterministic:
            structure["transition"] = most_likely_moves(structure["transition"])
        raw_reward, reward_std = _sample_rewards(rng, structure, n_actions, parts)
        reward = yield from _calibrate_terminal_rewards(rng, structure, raw_reward)
        if reward is None:
            continue
        quality = yield from _quality(structure, reward, max_steps)
        if quality is None:
            continue
        meta = {"goal_terminal": bool(structure["goal"]), "pitfalls": int(structure["pitfall"].sum()),
                "draws": draw, "reward_parts": sorted(parts), "forward_reach": bp, "backward_reach": bm,
                **({"deterministic": True} if deterministic else {}), **quality}
        return Task(transition=structure["transition"], reward=reward, reward_std=reward_std,
                    start=structure["start"], terminal=structure["terminal"], state_mapping=mapping,
                    n_states=n_states, max_steps=max_steps, kind="anymdp", seed=seed,
                    version=GENERATOR_VERSION, meta=meta)
    raise RuntimeError(f"no acceptable AnyMDP task after {max_draws} draws for seed {seed} "
                       f"(n={n}, n_actions={n_actions}); loosen the band reach or raise max_draws")


# ---------------------------------------------------------------------- structure


def most_likely_moves(transition: np.ndarray) -> np.ndarray:
    """``[n, na, n]`` rows -> each row's most likely target with probability 1 (the first of tied ones); zero
    rows (terminal states) stay zero."""
    out = np.zeros_like(transition)
    live = transition.sum(-1) > 0
    i, a = np.nonzero(live)
    out[i, a, transition[i, a].argmax(-1)] = 1.0
    return out


def _sample_structure(rng: np.random.Generator, n: int, na: int, bp: int, bm: int) -> dict:
    """Start distribution, pitfalls, goal and the banded transition tensor (``docs/anymdp.md`` sections 2-3)."""
    p0 = np.zeros(3)
    while p0.sum() <= 0:
        p0 = np.maximum(rng.normal(size=3), 0.0)
    start = np.zeros(n)
    start[:3] = p0 / p0.sum()

    p_pit = max(rng.uniform(-0.2, 0.4), 0.0)
    while True:
        pit = rng.random(n) < p_pit
        if pit.sum() < n * p_pit + 1:
            break
    pit[start > 0] = False
    goal = bool(rng.random() < 0.3)
    pit[n - 1] = False
    terminal = pit.copy()
    terminal[n - 1] = goal

    # Bands [s_from, s_to) of the live states.
    min_leap, max_leap = 1, max(2, bp)
    min_back, max_back = 1, max(2, bm)
    live = np.flatnonzero(~terminal)
    s = live
    from_lo = np.maximum(0, s - max_back)
    from_hi = np.maximum(0, s - min_back)
    s_from = rng.integers(from_lo, from_hi + 1)
    to_hi = np.minimum(n, s + max_leap) - 1
    to_lo = np.minimum(np.minimum(n - 1, s + min_leap), to_hi)
    s_to = rng.integers(to_lo, to_hi + 1)
    # Grow s_to until two non-terminal states lie strictly ahead of s inside the band.
    live_before = np.concatenate([[0], np.cumsum(~terminal)])  # live states in [0, k)
    need = np.searchsorted(live_before, live_before[s + 1] + 2, side="left")
    s_to = np.maximum(s_to, np.minimum(need, n))

    cols = np.arange(n)
    band = (cols[None, :] >= s_from[:, None]) & (cols[None, :] < s_to[:, None])  # [L, n]
    weight = np.where(band, np.minimum(np.maximum(rng.normal(size=(len(live), n)), 0.1), 1.0), 0.0)
    weight[np.arange(len(live)), s] *= 0.5
    if not goal:
        weight[live == n - 1, n - 1] = 0.0  # the chain end does not loop on itself (as the reference)
    weight /= weight.sum(-1, keepdims=True)

    low = (s_from - 1.0)[:, None]  # rng.uniform(low, high) is low + (high - low) * U, drawn the same way
    centre = low + (s_to[:, None] - low) * rng.random((len(live), na))
    sigma = np.minimum(np.maximum(rng.exponential(1.0, size=len(live)), 0.2), 1.6)
    dist2 = (centre[:, :, None] - cols[None, None, :]) ** 2  # [L, na, n]
    claim = np.exp(-dist2 / sigma[:, None, None] ** 2)
    # Columns no action claims go wholly to the nearest centre.
    orphan = claim.sum(1) < _EPS  # [L, n]
    if orphan.any():
        li, ji = np.nonzero(orphan)
        claim[li, dist2[li, :, ji].argmin(-1), ji] = 1.0
    claim /= claim.sum(1, keepdims=True)
    rows = claim * weight[:, None, :]
    rows /= rows.sum(-1, keepdims=True)
    transition = np.zeros((n, na, n))
    transition[live] = rows
    return {"n": n, "start": start, "pitfall": pit, "goal": goal, "terminal": terminal,
            "transition": transition}


# ---------------------------------------------------------------------- rewards


def _fourier_potential(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth random 1-D function of the chain index: up to 3 Fourier terms of order <= 5, period 2n."""
    terms = int(rng.integers(1, 4))
    order = rng.integers(1, 6, size=terms)
    coef = rng.normal(size=(terms, 2))
    if amplitude == 0:  # the draws above are still made: they keep the seed's stream
        return np.zeros(n)
    x = 2.0 * np.pi * np.arange(n)[:, None] / (2 * n)
    phi = (coef[:, 0] * np.sin(order * x) + coef[:, 1] * np.cos(order * x)).sum(-1)
    phi -= phi.mean()
    peak = np.abs(phi).max()
    return phi * (amplitude / peak) if peak > 0 else phi


def _sample_rewards(rng: np.random.Generator, st: dict, na: int, parts: frozenset) -> tuple[np.ndarray, np.ndarray]:
    """The composite reward without terminal rewards, and its noise std, both ``[n, na, n]`` (``docs/anymdp.md`` 4.1-4.4)."""
    n, terminal = st["n"], st["terminal"]
    reward = np.zeros((n, na, n))
    std = np.zeros((n, na, n))
    if "potential" in parts:
        scale = 0.0 if rng.random() < 0.5 else min(max(rng.exponential(1.0), 0.2), 5.0)
        amplitude = max(rng.uniform(-scale, scale), 0.0) if scale > 0 else 0.0
        phi = _fourier_potential(rng, n, amplitude)
        if amplitude > 0:
            reward += (phi[:, None] - phi[None, :])[:, None, :]
    if "position" in parts:
        beta = rng.exponential(0.2)
        pdf = np.maximum(rng.normal(size=n), 0.0)
        pdf[-1] += 0.2
        pdf *= beta
        cdf = np.cumsum(pdf)
        offset = rng.uniform(0.1, 0.9) * cdf[-1]
        r_pos = np.where(terminal, 0.0, cdf - offset)
        s_pos = np.where(terminal, 0.0, np.maximum(rng.uniform(-0.3, 0.3, size=n), 0.0) * beta)
        reward += r_pos[None, None, :]
        std += s_pos[None, None, :]
    if "state_action" in parts:
        beta_sa = min(max(rng.exponential(0.05), 0.0), 0.1)
        mask = rng.random((n, na)) < 0.3
        r_sa = beta_sa * rng.normal(size=(n, na)) * mask
        s_sa = 0.3 * beta_sa * np.maximum(rng.normal(size=(n, na)), 0.0) * mask
        reward += r_sa[:, :, None]
        std += s_sa[:, :, None]
    if "step" in parts:
        if st["goal"]:
            reward += min(rng.normal(), 0.0) * 0.01
        elif st["pitfall"].any():
            reward += max(rng.normal(), 0.0) * 0.01
    return reward, std


def _calibrate_terminal_rewards(rng: np.random.Generator, st: dict, raw_reward: np.ndarray) -> Generator:
    """Raise the goal and sink the pitfalls until values are ordered (``docs/anymdp.md`` 4.5); returns the reward, or
    ``None`` if 5 rounds fail. Yields its solve requests (see :func:`_solve_in_lockstep`)."""
    n = st["n"]
    pit, terminal, goal = st["pitfall"], st["terminal"], st["goal"]
    non_pit = ~terminal
    starts = st["start"] > 0
    last = n - 2 if goal else n - 1
    gamma = CALIBRATION_GAMMA
    term = np.zeros(n)
    term[-1] = 1.0
    for _ in range(CALIBRATION_ROUNDS):
        reward = raw_reward + term[None, None, :]
        v = (yield ("optimal", st["transition"], reward, gamma)).max(-1)
        pit_gain = term.min() - v[non_pit].min() + 1.0
        goal_fall = v[starts].max() - v[last] + rng.uniform(2.0, 5.0)
        if pit_gain <= 0 and goal_fall <= 0:
            return reward
        if pit_gain > 0:
            term[pit] -= pit_gain + rng.uniform(1.0, 10.0)
        if goal_fall > 0:
            d = max(2.0 * goal_fall, rng.uniform(1.0, 10.0))
            term[-1] += d if goal else (1.0 - gamma) * d
    return None


# ---------------------------------------------------------------------- quality filter


def quality_gamma(n: int) -> float:
    """Discount of the quality filter, ``2^(-1/n)``: an effective horizon that grows with the chain."""
    return float(2.0 ** (-1.0 / n))


def _quality(st: dict, reward: np.ndarray, max_steps: int) -> Generator:
    """``docs/anymdp.md`` section 5: the oracle must beat random by 2 per episode from every start state, and its
    state-visit distribution must be spread out (Gini > 0.70, normalised entropy > 0.35). Returns the
    quality record or ``None``; yields its solve requests."""
    n = st["n"]
    gamma = quality_gamma(n)
    q_opt = yield ("optimal", st["transition"], reward, gamma)
    q_rnd = yield ("uniform", st["transition"], reward, gamma)
    scale = (1.0 - gamma) * max_steps
    starts = np.flatnonzero(st["start"] > 0)
    gap = (q_opt[starts].max(-1) - q_rnd[starts].max(-1)) * scale
    if np.any(gap < 2.0):
        return None
    gini, entropy = visit_spread(st["transition"], q_opt.argmax(-1), st["start"], st["terminal"], max_steps)
    if not (gini > 0.70 and entropy > 0.35):
        return None
    return {"gap": float(gap.min()), "gini": float(gini), "entropy": float(entropy)}


def visit_spread(transition: np.ndarray, actions: np.ndarray, start: np.ndarray, terminal: np.ndarray,
                 max_steps: int) -> tuple[float, float]:
    """Gini impurity and normalised entropy of a deterministic policy's long-run state visits.

    Terminal states restart from the start distribution; the chain is raised to ``2^K`` steps with
    ``K = floor(log2 max_steps) + 1`` (as the reference), and the worst start state counts.
    """
    n = transition.shape[0]
    p = transition[np.arange(n), actions].copy()
    p[terminal] = start
    for _ in range(int(np.log2(max_steps)) + 1):
        p = p @ p
    rows = p[start > 0] + 1e-12
    gini = 1.0 - (rows * rows).sum(-1)
    entropy = -(rows * np.log(rows)).sum(-1) / np.log(n)
    return float(gini.min()), float(entropy.min())

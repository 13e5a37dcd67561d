"""The planning backbone as it was before the chunked backups (git 4ccd8ec): the reference for the tests.

It materialises every row's next-observation counts ``[B, C, S*A*S]`` and runs one batched
matrix-vector product per row and value-iteration step -- slow, but a literal transcription of the
statistics and the Bellman backups, so the fast form in ``modeling_anymdp_agent`` is checked against it.
Only ``forward`` and its helpers are replaced; the parameters are those of the planner it wraps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anymdp_agent.modeling_anymdp_agent import (END_TERMINATED, END_TRUNCATED, AnyMDPAgentCache, InContextPlanner, previous_rows,
                                                reward_scale)


class ReferencePlanner(InContextPlanner):
    """``InContextPlanner`` with the per-row (materialised) statistics and backups of git 4ccd8ec."""

    @classmethod
    def wrapping(cls, planner: InContextPlanner) -> "ReferencePlanner":
        ref = cls(planner.config)
        ref.load_state_dict(planner.state_dict())
        return ref

    # -- memory over a chunk --------------------------------------------------------------------
    def accumulate(self, cache, prev_obs, prev_act, prev_rew, observations):
        """Statistics seen by each row of a chunk: the cache plus the rows before it, ``[B, C, ...]``."""
        b, c = observations.shape
        n = cache.n_sa.shape[1]
        a = self.config.num_actions
        real = prev_act >= 0
        sa = (prev_obs.clamp(min=0) * a + prev_act.clamp(min=0))
        w = real.float()
        dev = observations.device
        hot_sa = torch.zeros(b, c, n * a, device=dev).scatter_(2, sa[..., None], w[..., None])
        n_sa = cache.n_sa.reshape(b, 1, n * a) + hot_sa.cumsum(1)
        r_sum = cache.r_sum.reshape(b, 1, n * a) + (hot_sa * prev_rew[..., None]).cumsum(1)
        hot_ss = torch.zeros(b, c, n * a * n, device=dev).scatter_(2, (sa * n + observations)[..., None], w[..., None])
        n_ss = cache.n_ss.reshape(b, 1, n * a * n) + hot_ss.cumsum(1)
        ended = (prev_act == END_TERMINATED).float()
        hot_t = torch.zeros(b, c, n, device=dev).scatter_(2, prev_obs.clamp(min=0)[..., None], ended[..., None])
        terminal = (cache.terminal[:, None] + hot_t.cumsum(1)).clamp(max=1.0)
        rr = prev_rew * w
        r_count = cache.r_count[:, None] + w.cumsum(1)
        r_sq = cache.r_sq[:, None] + (rr * rr).cumsum(1)
        r_max = torch.maximum(cache.r_max[:, None],
                              torch.where(real, prev_rew, torch.full_like(prev_rew, -torch.inf)).cummax(1).values)
        # the context head's counts: rewarded steps and closed episodes
        r_nonzero = cache.r_nonzero[:, None] + ((prev_rew != 0) & real).float().cumsum(1)
        closed = (prev_act == END_TERMINATED) | (prev_act == END_TRUNCATED)
        episodes = cache.episodes[:, None] + closed.float().cumsum(1)
        return {"n_sa": n_sa.view(b, c, n, a), "r_sum": r_sum.view(b, c, n, a), "n_ss": n_ss.view(b, c, n, a, n),
                "terminal": terminal, "r_count": r_count, "r_sq": r_sq, "r_max": r_max, "r_nonzero": r_nonzero,
                "episodes": episodes}

    # -- planning --------------------------------------------------------------------------------
    def features(self, n_sa, r_mean, scale, visited):
        n_s = n_sa.sum(-1, keepdim=True).expand_as(n_sa)
        feats = torch.stack([
            torch.log1p(n_sa), torch.log1p(n_s), torch.rsqrt(1.0 + n_sa), visited,
            r_mean / scale[..., None, None], (n_sa / n_s.clamp(min=1.0)),
        ], -1)
        return feats

    def plan(self, stats: dict, values: torch.Tensor, action_mask: torch.Tensor | None):
        """``planning_steps`` Bellman backups on the empirical model from ``values``; returns (Q, V).

        Rewards are divided by the history's running reward scale, so plans are scale-free.
        ``stats`` tensors are ``[L, S, A, ...]``, ``values [L, S]``, ``action_mask [L, A]``.
        """
        n_sa, r_sum, n_ss = stats["n_sa"], stats["r_sum"], stats["n_ss"]
        lead = n_sa.shape[:-2]
        s, a = n_sa.shape[-2:]
        scale = reward_scale(stats["r_sq"], stats["r_count"])
        visited = (n_sa > 0).float()
        safe = n_sa.clamp(min=1.0)
        r_mean = r_sum / safe
        r_hat = r_mean / scale[..., None, None]
        gamma = self.gamma
        # Empirical transitions of tried pairs, [L, S*A, S]; kept free of parameters (the discount multiplies
        # the product), so backward never materialises a gradient of this large matrix.
        p_vis = (n_ss * (visited / safe)[..., None]).reshape(-1, s * a, s)
        r_max = torch.where(stats["r_count"] > 0, stats["r_max"], torch.zeros_like(stats["r_max"])) / scale
        # Optimism for untried pairs: r_max over the *initial* horizon 1/(1 - planning_gamma), scaled by a
        # learned factor. Tied to the fixed initial horizon, not to the learned discount, so the discount's
        # gradient comes from value propagation alone (tying them let imitation trade horizon for optimism).
        horizon = 1.0 / (1.0 - self.config.planning_gamma)
        u = (F.softplus(self.optimism[0] + math.log(math.e - 1.0)) * r_max.clamp(min=0.0) + self.optimism[1]) * horizon
        u = u[..., None, None]
        hidden = torch.tanh(self.bonus_in(self.features(n_sa, r_mean, scale, visited)))
        bonus = self.bonus_out(hidden)[..., 0]
        base = visited * r_hat + (1.0 - visited) * u + bonus
        if action_mask is not None:  # actions a task lacks are never worth taking
            base = base + torch.where(action_mask[:, None, :], 0.0, -1e9)
        base = base.reshape(-1, s * a, 1)
        alive = 1.0 - stats["terminal"]
        v = values
        q = base
        for _ in range(self.steps):
            q = base + gamma * torch.bmm(p_vis, v.reshape(-1, s, 1))
            v = q.view(*lead, s, a).max(-1).values * alive
        return q.view(*lead, s, a), v

    def temperature(self) -> torch.Tensor:
        """Softmax temperature of the policy over normalised Q values (1 at initialisation)."""
        return torch.exp(self.log_temperature)

    def world_model(self, stats, observations, actions):
        """Next-observation logits and reward prediction at each row from its statistics."""
        n_sa, r_sum, n_ss = stats["n_sa"], stats["r_sum"], stats["n_ss"]
        s = n_sa.shape[-2]
        obs = observations.clamp(min=0)
        act = actions.clamp(min=0)
        gather_sa = lambda t: torch.gather(t.flatten(-2), -1, (obs * t.shape[-1] + act)[..., None])[..., 0]  # noqa: E731
        count = gather_sa(n_sa)
        rsum = gather_sa(r_sum)
        lead = n_ss.shape[:-3]
        row = torch.gather(n_ss.reshape(*lead, -1, s), -2,
                           (obs * n_sa.shape[-1] + act)[..., None, None].expand(*lead, 1, s))[..., 0, :]
        alpha = torch.exp(self.world_smoothing[0])
        beta = torch.exp(self.world_smoothing[1])
        obs_logits = torch.log((row + alpha / s) / (count[..., None] + alpha))
        total = n_sa.sum((-1, -2))
        r_bar = r_sum.sum((-1, -2)) / total.clamp(min=1.0)
        reward = (rsum + beta * r_bar) / (count + beta)
        return obs_logits, reward

    # -- forward over rows ------------------------------------------------------------------------
    def forward(self, observations, actions, rewards, cache: AnyMDPAgentCache, action_mask=None, **unused):
        """Policy logits, world-model outputs and the updated cache for ``[B, T]`` rows (the backbone
        interface; the planner reads no tags or prompts)."""
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
            stats = self.accumulate(cache, prev_obs, prev_act, prev_rew, o)
            start_values = anchor if self.config.carry_values else torch.zeros_like(anchor)
            c = o.shape[1]
            flat = {k: v.reshape(b * c, *v.shape[2:]) for k, v in stats.items()}
            mask = None if action_mask is None else action_mask[:, None, :].expand(b, c, -1).reshape(b * c, -1)
            q, v = self.plan(flat, start_values[:, None].expand(b, c, -1).reshape(b * c, -1), mask)
            q = q.view(b, c, *q.shape[1:])
            q_now = torch.gather(q, 2, o.clamp(min=0)[..., None, None].expand(b, c, 1, q.shape[-1]))[:, :, 0]
            outs_pi.append(q_now / self.temperature())
            obs_logits, rew_pred = self.world_model(stats, o, a_)
            outs_obs.append(obs_logits)
            outs_rew.append(rew_pred)
            outs_scale.append(reward_scale(stats["r_sq"], stats["r_count"]))
            # The state after the chunk: statistics of all its rows, the last row pending.
            last = {k: val[:, -1] for k, val in stats.items()}
            new = dict(cache.tensors)
            new.update(last)
            new["values"] = v.view(b, c, -1)[:, -1]
            new["anchor"] = anchor
            new["step"] = cache.step + c
            new["last_obs"], new["last_action"], new["last_reward"] = o[:, -1], a_[:, -1], r[:, -1]
            cache = AnyMDPAgentCache(new, cache.layers)
            pos += length
        return (torch.cat(outs_pi, 1), torch.cat(outs_obs, 1), torch.cat(outs_rew, 1), torch.cat(outs_scale, 1), cache)


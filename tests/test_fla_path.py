"""The optional flash-linear-attention path of the sequence backbone, against stand-ins with fla's contract.

fla (``fla.ops.simple_gla.chunk_simple_gla``) runs on CUDA through Triton, which this project's CI does
not have, so these tests replace the kernel with a pure-PyTorch stand-in that follows fla's documented
contract (``[B, T, H, D]`` tensors, ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``,
older releases defaulting to head-first input unless told ``head_first=False``) and route CPU tensors
through the fla path. They check our adapter (layout, scale, state in and out), not fla itself.
"""

from __future__ import annotations

import torch

import anymdp_agent.modeling_anymdp_agent as modeling
from test_agent_model import random_rows, tiny_model


def _recurrence(q, k, v, g, scale, state):
    """fla's recurrence on ``[B, T, H, D]`` inputs, one token at a time."""
    outs = []
    for t in range(q.shape[1]):
        state = g[:, t].exp()[..., None, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * (q[:, t, :, :, None] * state).sum(-2))
    return torch.stack(outs, 1), state


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None):
    """Stand-in for current fla releases: ``[B, T, H, D]`` only."""
    chunk_simple_gla.calls += 1
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, final = _recurrence(q, k, v, g, scale, initial_state)
    return o, final if output_final_state else None


def chunk_simple_gla_head_first(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                                head_first=True):
    """Stand-in for older releases: head-first ``[B, H, T, D]`` unless ``head_first=False``."""
    if head_first:
        q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    o, final = chunk_simple_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state)
    return (o.transpose(1, 2) if head_first else o), final


def _run(model, obs, act, rew):
    first = model(obs[:, :9], act[:, :9], rew[:, :9])
    second = model(obs[:, 9:], act[:, 9:], rew[:, 9:], cache=first.cache)
    return torch.cat([first.policy_logits, second.policy_logits], 1), second.cache


def test_fla_path_equals_the_pytorch_chunked_form(monkeypatch):
    model = tiny_model("sequence")
    obs, act, rew = random_rows(2, 23, seed=4)
    with torch.no_grad():
        expected, cache = _run(model, obs, act, rew)
    for kernel in (chunk_simple_gla, chunk_simple_gla_head_first):
        chunk_simple_gla.calls = 0
        with monkeypatch.context() as m:
            m.setattr(modeling, "fla_chunk_simple_gla", lambda kernel=kernel: kernel)
            m.setattr(modeling.GatedLinearAttention, "fla_device_types", ("cpu",))
            with torch.no_grad():
                got, got_cache = _run(model, obs, act, rew)
        assert chunk_simple_gla.calls == 2 * model.config.num_hidden_layers, kernel.__name__
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        for x, y in zip(got_cache.layers, cache.layers):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_fla_path_is_off_on_cpu_by_default_and_by_config(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the fla kernel must not be called")

    monkeypatch.setattr(modeling, "fla_chunk_simple_gla", lambda: fail)
    obs, act, rew = random_rows(1, 12, seed=1)
    tiny_model("sequence")(obs, act, rew)  # CPU tensors: the PyTorch form
    monkeypatch.setattr(modeling.GatedLinearAttention, "fla_device_types", ("cpu",))
    tiny_model("sequence", use_flash_linear_attention=False)(obs, act, rew)


def test_missing_fla_falls_back(monkeypatch):
    monkeypatch.setattr(modeling.GatedLinearAttention, "fla_device_types", ("cpu",))
    monkeypatch.setattr(modeling, "fla_chunk_simple_gla", lambda: None)
    obs, act, rew = random_rows(1, 12, seed=2)
    out = tiny_model("sequence")(obs, act, rew)
    assert torch.isfinite(out.policy_logits).all()

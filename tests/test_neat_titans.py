"Titans: closed-form chunk update, per-sequence state, gradients to W_Q/W_K/W_V, NaN recovery, ablation switches, bad configs."
import logging
import pytest, torch
from hsa_lib.core import ConfigError, set_seed
from hsa_lib.neat.titans import NeuralMemory, TitansConfig, TitansLM, chunk_update, memory_apply, memory_grads, swa_baseline
from hsa_lib.neat.baseline import count_params

@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_memory_learns_a_repeated_pair_within_the_sequence(memory):
    "Test-time updates drive the associative loss of a repeated (key, value) towards 0; frozen memory keeps it."
    set_seed(0); mem = NeuralMemory(TitansConfig(dim=16, mem_dim=16, memory=memory, chunk=4))
    x = torch.randn(2, 1, 16).expand(2, 32, 16)
    _, live = mem(x); _, frozen = mem(x, frozen=True)
    assert torch.isfinite(live["surprise"]).all()
    assert (live["surprise"][:, -1] < 0.1 * frozen["surprise"][:, -1]).all()

def test_chunk_update_matches_token_recurrence_mlp():
    torch.manual_seed(0); W0 = [torch.randn(2, 6, 4) * 0.5, torch.randn(2, 4, 6) * 0.5]; S0 = [torch.randn_like(w) * 0.1 for w in W0]
    k, v = torch.nn.functional.normalize(torch.randn(2, 5, 4), dim=-1), torch.randn(2, 5, 4)
    th, et, al = torch.rand(2, 5), torch.rand(2, 5), torch.rand(2, 5) * 0.3
    Wc, Sc, _ = chunk_update(W0, S0, k, v, th, et, al)
    W, S = list(W0), list(S0)
    for t in range(5):
        G, _ = memory_grads(W0, k[:, t:t+1], v[:, t:t+1], th[:, t:t+1])
        S = [et[:, t, None, None] * s - g for s, g in zip(S, G)]; W = [(1 - al[:, t, None, None]) * w + s for w, s in zip(W, S)]
    for a, b in zip(Wc + Sc, W + S): assert torch.allclose(a, b, atol=1e-4)

def test_state_is_per_sequence_and_gradients_reach_projections():
    set_seed(0); cfg = TitansConfig(vocab_size=20, dim=32, max_len=64, window=8, chunk=8)
    m = TitansLM(cfg); ids = torch.randint(0, 20, (3, 48))
    full = m(ids); alone = m(ids[2:3]); again = m(ids)
    assert torch.allclose(full[2:3], alone, atol=1e-5) and torch.equal(full, again)
    m.zero_grad(); m(ids).logsumexp(-1).mean().backward()
    mem = m.blocks[0].memory
    for n in ("W_Q", "W_K", "W_V"): assert getattr(mem, n).weight.grad.abs().sum() > 0, n

def test_frozen_memory_never_changes_the_state():
    set_seed(0); m = NeuralMemory(TitansConfig(dim=16, mem_dim=16, chunk=4)); x = torch.randn(1, 16, 16)
    y, info = m(x, frozen=True)
    assert (info["theta"] == 0).all()
    W0 = [w[None] for w in m.init]; q = m.project(x)[0]
    assert torch.allclose(y, m.out(memory_apply(W0, q)), atol=1e-5)

def test_ablation_switches():
    x = torch.randn(1, 8, 16)
    _, i1 = NeuralMemory(TitansConfig(dim=16, mem_dim=16, momentum=False))(x)
    _, i2 = NeuralMemory(TitansConfig(dim=16, mem_dim=16, decay=False))(x)
    assert (i1["eta"] == 0).all() and (i2["alpha"] == 0).all()

def test_nan_update_is_detected_reset_and_logged(caplog):
    set_seed(0); m = NeuralMemory(TitansConfig(dim=16, mem_dim=16, chunk=4)); x = torch.randn(2, 16, 16)
    ref, _ = m(x); bad = x.clone(); bad[0, 2] = float("nan")
    with caplog.at_level(logging.WARNING, logger="hsa_lib"): y, _ = m(bad)
    assert "non-finite memory update" in caplog.text
    assert torch.isfinite(y[0, 4:]).all() and torch.allclose(y[1], ref[1], atol=1e-5)

@pytest.mark.parametrize("kw,msg", [(dict(window=300), "window=300"), (dict(chunk=0), "chunk=0"), (dict(memory="lstm"), "lstm"), (dict(mem_layers=(5,)), "mem_layers")])
def test_bad_configs(kw, msg):
    with pytest.raises(ConfigError, match=msg): TitansConfig(**kw)

def test_swa_baseline_is_parameter_matched():
    cfg = TitansConfig(); t, s = count_params(TitansLM(cfg)), count_params(swa_baseline(cfg))
    assert abs(t - s) / t < 0.1 and swa_baseline(cfg).cfg.window == cfg.window

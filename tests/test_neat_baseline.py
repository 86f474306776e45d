"NEAT baseline: causality (no leakage), padding, shapes, parameter matching, bad configs."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import ConfigError, set_seed
from hsa_lib.neat.baseline import (BaselineConfig, CausalLM, attention_mask, count_params, lm_loss, next_token_targets, param_matched, train_lm)

def test_uniform_tokens_loss_stays_above_ln_vocab():
    set_seed(0); V = 16
    m = CausalLM(BaselineConfig(vocab_size=V, dim=32, n_layers=2, max_len=24))
    def batch(s): ids = torch.randint(0, V, (16, 24)); return ids, next_token_targets(ids), None
    train_lm(m, batch, steps=40, lr=5e-3)
    held = torch.randint(0, V, (128, 24))
    with torch.no_grad(): loss = lm_loss(m(held), next_token_targets(held)).item()
    assert loss >= math.log(V) - 0.02, loss

@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 20), cut=st.integers(1, 19), window=st.one_of(st.none(), st.integers(1, 20)))
def test_future_tokens_never_change_past_logits(n, cut, window):
    cut = min(cut, n - 1); torch.manual_seed(0)
    m = CausalLM(BaselineConfig(vocab_size=11, dim=16, n_heads=2, n_layers=2, max_len=20, window=window)).eval()
    a = torch.randint(0, 11, (1, n)); b = a.clone(); b[:, cut:] = torch.randint(0, 11, (1, n - cut))
    with torch.no_grad(): assert torch.allclose(m(a)[:, :cut], m(b)[:, :cut], atol=1e-5)

def test_left_padding_is_masked():
    set_seed(1); m = CausalLM(BaselineConfig()).eval(); ids = torch.randint(1, 64, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    with torch.no_grad(): assert torch.allclose(m(ids), m(padded, padded != 0)[:, 4:], atol=1e-4)
    assert not attention_mask(13, pad_mask=padded != 0)[0, 0, 4:, :4].any()

@pytest.mark.parametrize("kw,msg", [(dict(dim=30, n_heads=4), "dim=30"), (dict(window=300, max_len=256), "window=300"), (dict(vocab_size=0), "vocab_size")])
def test_impossible_shapes_raise(kw, msg):
    with pytest.raises(ConfigError, match=msg): BaselineConfig(**kw)

def test_bad_token_ids_and_lengths():
    m = CausalLM(BaselineConfig(max_len=8))
    with pytest.raises(ValueError, match="max_len"): m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"): m(torch.full((1, 3), 99))

def test_param_matched_is_close():
    cfg = BaselineConfig(); target = 3 * count_params(CausalLM(cfg))
    n = count_params(CausalLM(param_matched(cfg, target)))
    assert abs(n - target) / target < 0.1

"Splat attention: the factorized paths equal the definition on random shapes, and bad input is refused by name."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.hsa.splats import SplatConfig, SplatRegistry
from hsa_lib.hsa.attention import (AttentionInputError, HSAttention, SplatState, reference_attention, rel_err, splat_attention)

def _reg(hk, d, sizes, rank=0, window=0, seed=0):
    reg = SplatRegistry(SplatConfig(n_heads=hk, head_dim=d, level_sizes=sizes, rank=rank, local_window=window), seed=seed)
    with torch.no_grad():
        for l in range(reg.n_levels): reg.log_amp[l].normal_(); reg.log_sigma[l].add_(0.3 * torch.randn_like(reg.log_sigma[l]))
        for p in reg.u: p.normal_(0, 0.3)
    return reg

@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 2), hk=st.integers(1, 3), g=st.integers(1, 3), n=st.integers(1, 40), d=st.sampled_from([2, 4, 8]),
       sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3), causal=st.booleans(), pad=st.integers(0, 5),
       decode=st.integers(0, 3), window=st.sampled_from([0, 1, 3, 8]), rank=st.sampled_from([0, 1]), chunk=st.sampled_from([1, 4, 16]),
       scale=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_factorized_equals_reference(b, hk, g, n, d, sizes, causal, pad, decode, window, rank, chunk, scale, seed):
    torch.manual_seed(seed)
    reg = _reg(hk, d, tuple(sizes), min(rank, d), window, seed); sp = reg.stacked()
    nq = max(1, n - decode)
    q, k, v = torch.randn(b, hk * g, nq, d) * scale, torch.randn(b, hk, n, d) * scale, torch.randn(b, hk, n, d)
    mask = (torch.arange(n)[None] < n - min(pad, n - 1)).expand(b, n) if pad else None
    lw = reg.hierarchy.log_weight("local") if window else 0.0
    with torch.no_grad():
        out, _ = splat_attention(q, k, v, sp, causal, mask, chunk, local_window=window, log_w_local=lw)
        ref = reference_attention(q, k, v, sp, causal, mask, window, lw)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5

def test_far_away_queries_do_not_nan():
    "Queries 1e3 away from every splat: exp would underflow; log space keeps the output finite, and exact in float64."
    reg = _reg(1, 8, (4,)).double(); sp = reg.stacked()
    q, k, v = torch.randn(1, 1, 16, 8, dtype=torch.float64) + 1e3, torch.randn(1, 1, 16, 8, dtype=torch.float64), torch.randn(1, 1, 16, 8, dtype=torch.float64)
    for causal in (False, True):
        out, _ = splat_attention(q, k, v, sp, causal)
        assert rel_err(out, reference_attention(q, k, v, sp, causal)) < 1e-9
        out32, _ = splat_attention(q.float(), k.float(), v.float(), reg.float().stacked(), causal); reg.double()
        assert torch.isfinite(out32).all() and (out32.abs().amax(-1) <= v.abs().max() + 1e-4).all()   # a convex mix of values

def test_fully_masked_rows_are_zero_not_nan():
    reg = _reg(1, 4, (3,)); sp = reg.stacked(); q, k, v = torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    out, _ = splat_attention(q, k, v, sp, False, torch.zeros(1, 6, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))

def test_state_is_constant_size_and_exact():
    reg = _reg(2, 8, (8, 4)); sp = reg.stacked(); torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 300, 8), torch.randn(1, 2, 300, 8), torch.randn(1, 2, 300, 8)
    full, _ = splat_attention(q, k, v, sp, True, chunk=32)
    state, outs, sizes = None, [], set()
    for s in range(0, 300, 37):
        o, state = splat_attention(q[:, :, s:s+37], k[:, :, s:s+37], v[:, :, s:s+37], sp, True, state=state, chunk=32)
        outs.append(o); sizes.add(sum(t.numel() for t in (state.S, state.z, state.m)))
    assert rel_err(torch.cat(outs, 2), full) < 1e-5 and len(sizes) == 1 and state.n == 300

BAD = {
    "3-D query": (lambda q, k, v, sp: (q[0], k, v, sp), "q must be a 4-D tensor"),
    "integer keys": (lambda q, k, v, sp: (q, k.long(), v, sp), "k must be floating point"),
    "mixed dtypes": (lambda q, k, v, sp: (q, k, v.double(), sp), "dtypes differ"),
    "heads not a multiple": (lambda q, k, v, sp: (torch.randn(1, 3, 5, 8), k, v, sp), "multiple of key/value heads"),
    "v length": (lambda q, k, v, sp: (q, k, v[:, :, :4], sp), "must match k"),
    "empty keys": (lambda q, k, v, sp: (q, k[:, :, :0], v[:, :, :0], sp), "zero-length sequence"),
    "inf values": (lambda q, k, v, sp: (q, k, v.index_fill(2, torch.tensor([1]), math.inf), sp), "v contains NaN or inf"),
    "no splats": (lambda q, k, v, sp: (q, k, v, sp | {"log_coef": torch.full_like(sp["log_coef"], -math.inf)}), "no live splats"),
    "head dim": (lambda q, k, v, sp: (torch.randn(1, 4, 5, 6), torch.randn(1, 2, 5, 6), v, sp), "splats are for 2 heads of dim 8"),
}

@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_named(case):
    make, msg = BAD[case]; reg = _reg(2, 8, (4,)); sp = reg.stacked()
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(AttentionInputError, match=msg): splat_attention(*make(q, k, v, sp))

def test_mask_of_wrong_size():
    reg = _reg(2, 8, (4,)); sp = reg.stacked(); q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(AttentionInputError, match=r"key_mask must have shape \(batch, keys\) = \(1, 5\), got \(1, 4\)"):
        splat_attention(q, k, v, sp, key_mask=torch.ones(1, 4, dtype=torch.bool))

def test_module_gradients_reach_every_splat_parameter():
    att = HSAttention(32, 4, 2, SplatConfig(n_heads=2, head_dim=8, level_sizes=(4, 2), rank=1, local_window=4), seed=0)
    with torch.no_grad(): [p.normal_(0, 0.1) for p in att.registry.u]
    att(torch.randn(2, 20, 32)).pow(2).mean().backward()
    for name, p in att.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

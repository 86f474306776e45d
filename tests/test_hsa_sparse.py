"Sparse top-m splat attention: equal to splat_attention at m = K, to the sparse definition at m < K, the indices' recall and upkeep, and bad input."
import math, re
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.hsa.splats import SplatConfig, SplatRegistry
from hsa_lib.hsa.attention import AttentionInputError, rel_err, splat_attention
from hsa_lib.hsa.sparse import (ExactIndex, IVFIndex, SplatIndexError, index_recall, kmeans, sparse_reference_attention,
                                sparse_splat_attention, splat_scores)

def _reg(hk, d, sizes, rank=0, window=0, seed=0):
    reg = SplatRegistry(SplatConfig(n_heads=hk, head_dim=d, level_sizes=sizes, rank=rank, local_window=window), seed=seed)
    with torch.no_grad():
        for l in range(reg.n_levels): reg.log_amp[l].normal_(); reg.log_sigma[l].add_(0.3 * torch.randn_like(reg.log_sigma[l]))
        for p in reg.u: p.normal_(0, 0.3)
    return reg

def _inputs(b, hk, g, nq, n, d, scale=1.5, seed=0):
    torch.manual_seed(seed)
    return torch.randn(b, hk * g, nq, d) * scale, torch.randn(b, hk, n, d) * scale, torch.randn(b, hk, n, d)

@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), hk=st.integers(1, 2), g=st.integers(1, 3), n=st.integers(1, 30), d=st.sampled_from([2, 4, 8]),
       sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3), causal=st.booleans(), pad=st.integers(0, 5),
       decode=st.integers(0, 3), window=st.sampled_from([0, 3]), rank=st.sampled_from([0, 1]), chunk=st.sampled_from([1, 4, 16]),
       m_frac=st.floats(0.0, 1.0), full=st.booleans(), seed=st.integers(0, 10_000))
def test_sparse_equals_dense_at_K_and_definition_below(b, hk, g, n, d, sizes, causal, pad, decode, window, rank, chunk, m_frac, full, seed):
    reg = _reg(hk, d, tuple(sizes), min(rank, d), window, seed); sp = reg.stacked(); K = sp["mu"].shape[1]
    q, k, v = _inputs(b, hk, g, max(1, n - decode), n, d, seed=seed)
    mask = (torch.arange(n)[None] < n - min(pad, n - 1)).expand(b, n) if pad else None
    kw = dict(local_window=window, log_w_local=reg.hierarchy.log_weight("local") if window else 0.0)
    m = K if full else max(1, round(m_frac * K))
    with torch.no_grad():
        out, _ = sparse_splat_attention(q, k, v, sp, m, None, mask, causal, chunk, **kw)
        ref = (splat_attention(q, k, v, sp, causal, mask, chunk, **kw)[0] if full else sparse_reference_attention(q, k, v, sp, m, causal, mask, **kw))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pad,gqa,decode", [(False, False, False), (True, False, False), (False, True, False), (True, True, True), (False, True, True)])
@pytest.mark.parametrize("make_index", [lambda s: ExactIndex(s), lambda s: IVFIndex(s, nprobe=10_000)], ids=["exact", "ivf-all-cells"])
def test_with_index_at_K_and_below(causal, pad, gqa, decode, make_index):
    reg = _reg(2, 8, (6, 3, 2), rank=1, seed=3); sp = reg.stacked(); K = sp["mu"].shape[1]; n = 37
    q, k, v = _inputs(1, 2, 2 if gqa else 1, 4 if decode else n, n, 8, seed=3)
    mask = (torch.arange(n) < n - 6)[None] if pad else None
    index = make_index(sp)
    with torch.no_grad():
        for m in (1, 3, 7, K):
            out, _ = sparse_splat_attention(q, k, v, sp, m, index, mask, causal, chunk=8)
            ref = splat_attention(q, k, v, sp, causal, mask, chunk=8)[0] if m == K else sparse_reference_attention(q, k, v, sp, m, causal, mask)
            assert rel_err(out, ref) <= 1e-5, (m, rel_err(out, ref))

def test_m_below_K_differs_from_dense():
    "The check above can fail: with few splats per query the output is a different kernel."
    reg = _reg(2, 8, (8, 4)); sp = reg.stacked(); q, k, v = _inputs(1, 2, 1, 20, 20, 8)
    with torch.no_grad():
        assert rel_err(sparse_splat_attention(q, k, v, sp, 1)[0], splat_attention(q, k, v, sp)[0]) > 1e-3

def test_causal_selection_does_not_look_ahead():
    "Changing future keys and values changes no earlier output (the splats are chosen with the causal key maxima)."
    reg = _reg(1, 8, (8, 4)); sp = reg.stacked(); q, k, v = _inputs(1, 1, 1, 32, 32, 8)
    k2, v2 = k.clone(), v.clone(); k2[:, :, 20:] = torch.randn(1, 1, 12, 8) * 5; v2[:, :, 20:] += 3
    with torch.no_grad():
        a, _ = sparse_splat_attention(q, k, v, sp, 2, causal=True, chunk=16)
        b_, _ = sparse_splat_attention(q, k2, v2, sp, 2, causal=True, chunk=16)
    assert torch.allclose(a[:, :, :20], b_[:, :, :20], atol=1e-6) and not torch.allclose(a[:, :, 20:], b_[:, :, 20:])

def test_chunk_length_does_not_change_the_result():
    reg = _reg(2, 8, (8, 4)); sp = reg.stacked(); q, k, v = _inputs(1, 2, 2, 50, 50, 8)
    with torch.no_grad():
        outs = [sparse_splat_attention(q, k, v, sp, 3, causal=True, chunk=c)[0] for c in (1, 7, 16, 64)]
    assert all(rel_err(o, outs[0]) < 1e-5 for o in outs)

def test_decoding_with_state_equals_whole_sequence():
    reg = _reg(2, 8, (8, 4)); sp = reg.stacked(); q, k, v = _inputs(1, 2, 2, 60, 60, 8)
    with torch.no_grad():
        full, _ = sparse_splat_attention(q, k, v, sp, 4, causal=True, chunk=16)
        state, outs = None, []
        for s in range(0, 60, 13):
            o, state = sparse_splat_attention(q[:, :, s:s+13], k[:, :, s:s+13], v[:, :, s:s+13], sp, 4, causal=True, state=state, chunk=16); outs.append(o)
    assert rel_err(torch.cat(outs, 2), full) < 1e-5 and state.n == 60

def test_gradients_match_the_reference():
    "Gradients reach queries, keys and splat parameters, and equal those of the brute-force sparse definition."
    for causal, make_index in ((False, None), (True, None), (True, lambda s: IVFIndex(s, nprobe=99))):
        reg = _reg(2, 8, (6, 3)).double(); q, k, v = (t.double().requires_grad_() for t in _inputs(1, 2, 2, 15, 15, 8))
        sp = reg.stacked(); out, _ = sparse_splat_attention(q, k, v, sp, 3, make_index and make_index(sp), causal=causal, chunk=4)
        grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v, reg.mu[0], reg.log_sigma[1], reg.log_amp[0]))
        ref = sparse_reference_attention(q, k, v, reg.stacked(), 3, causal)
        rgrads = torch.autograd.grad(ref.pow(2).sum(), (q, k, v, reg.mu[0], reg.log_sigma[1], reg.log_amp[0]))
        for a, b_ in zip(grads, rgrads): assert torch.allclose(a, b_, atol=1e-8, rtol=1e-6) and a.abs().sum() > 0

def test_far_queries_and_masked_rows():
    "Queries far from every splat stay finite (log space); a row with no key gets zeros, not NaN."
    reg = _reg(1, 8, (4,)).double(); sp = reg.stacked()
    q, k, v = (t.double() for t in _inputs(1, 1, 1, 16, 16, 8)); q = q + 1e3
    with torch.no_grad():
        for causal in (False, True):
            out, _ = sparse_splat_attention(q, k, v, sp, 2, causal=causal)
            assert rel_err(out, sparse_reference_attention(q, k, v, sp, 2, causal)) < 1e-9
        out, _ = sparse_splat_attention(q, k, v, sp, 2, key_mask=torch.zeros(1, 16, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))

# --- indices

def _clustered(H, K, d, n, seed=0):
    g = torch.Generator().manual_seed(seed); centres = torch.randn(H, 32, d, generator=g) * 2
    mu = centres[:, torch.randint(0, 32, (K,), generator=g)] + 0.5 * torch.randn(H, K, d, generator=g)
    x = centres[:, torch.randint(0, 32, (n,), generator=g)][None] + 0.5 * torch.randn(1, H, n, d, generator=g)
    return dict(mu=mu, log_sigma=0.1 * torch.randn(H, K, 1, generator=g).expand(H, K, d), log_coef=0.5 * torch.randn(H, K, generator=g), u=None), x

def test_ivf_recall_is_reasonable_and_exact_with_all_cells():
    sp, x = _clustered(2, 400, 16, 128)
    exact = ExactIndex(sp).search(x, 8); ivf = IVFIndex(sp, nprobe=3)
    assert ivf.table.shape[1] == 20                                                 # √400 cells per head
    assert index_recall(ivf.search(x, 8), exact) > 0.9
    s_all, i_all = ivf.search(x, 8, nprobe=20)
    assert index_recall((s_all, i_all), exact) == 1.0 and torch.allclose(s_all, exact[0], atol=1e-4)
    g = torch.Generator().manual_seed(1)
    sp2 = dict(sp, mu=torch.randn(2, 400, 16, generator=g)); x2 = torch.randn(1, 2, 128, 16, generator=g)
    ex2, ivf2 = ExactIndex(sp2).search(x2, 8), IVFIndex(sp2)
    rec = [index_recall(ivf2.search(x2, 8, nprobe=p), ex2) for p in (1, 4, 20)]
    assert rec[0] < rec[1] < rec[2] == 1.0                                          # structureless data: more probes, more recall

def test_ivf_pads_when_cells_hold_fewer_than_m():
    reg = _reg(1, 4, (9,)); sp = reg.stacked()                                    # 9 live of 18 slots: 3 cells of ~3
    ivf = IVFIndex(sp, nprobe=1); sizes = (ivf.table[0] >= 0).sum(1)
    assert ivf.table.shape[1] == 3 and sizes.sum() == 9 and sizes.max() < 9
    s, i = ivf.search(torch.randn(1, 1, 5, 4), 9)                                  # one cell holds fewer than 9: the rest is padding
    assert s.shape == (1, 1, 5, 9) and torch.isinf(s[..., -1]).all() and (i < 18).all()
    assert set(torch.isfinite(s).sum(-1).flatten().tolist()) <= set(sizes.tolist())
    s, i = IVFIndex(sp, nprobe=99).search(torch.randn(1, 1, 5, 4), 18)
    assert (torch.isfinite(s).sum(-1) == 9).all() and all(set(row[:9].tolist()) == set(range(9)) for row in i[0, 0])

def test_search_bias_shapes():
    reg = _reg(2, 4, (6,)); sp = reg.stacked(); x = torch.randn(1, 2, 5, 4); K = sp["mu"].shape[1]
    for bias in (torch.randn(1, 2, K), torch.randn(1, 2, 5, K)):
        e = ExactIndex(sp).search(x, 3, bias); f = IVFIndex(sp, nprobe=99).search(x, 3, bias)
        assert torch.equal(e[1].sort(-1).values, f[1].sort(-1).values)
        assert torch.allclose(e[0], splat_scores(x, sp, bias).topk(3, -1).values)

@pytest.mark.parametrize("make_index", [lambda s: ExactIndex(s), lambda s: IVFIndex(s, nprobe=99)], ids=["exact", "ivf"])
def test_index_update_after_registry_changes(make_index):
    reg = _reg(2, 8, (6, 3), seed=5); q, k, v = _inputs(1, 2, 2, 24, 24, 8, seed=5)
    index = make_index(reg.stacked())
    def check():
        sp = reg.stacked()
        with pytest.raises(SplatIndexError, match="call index.update"): sparse_splat_attention(q, k, v, sp, 4, index, causal=True)
        index.update(sp)
        with torch.no_grad():
            for causal in (False, True):
                out, _ = sparse_splat_attention(q, k, v, sp, 4, index, causal=causal, chunk=8)
                assert rel_err(out, sparse_reference_attention(q, k, v, sp, 4, causal)) <= 1e-5
    new = reg.register(0, 1, q[0, 2, 5].detach(), -1.0, log_amp=3.0); check()    # a strong splat right on a query of head 1
    _, idx = index.search(q.reshape(1, 2, 48, 8), 1)                              # query heads 2, 3 share kv head 1
    l, h, s = reg.lookup(new); assert (l, h) == (0, 1) and idx[0, 1, 5, 0] == s     # the new splat is that query's best
    reg.unregister(reg.splats(level=1, head=0)[0].id); check()
    reg.split(reg.splats(level=0, head=0)[1].id, torch.randn(8)); check()
    ids = [sp_.id for sp_ in reg.splats(level=0, head=1)][:2]; reg.merge(*ids); check()
    for _ in range(reg.capacity(1)): reg.register(1, 0, torch.randn(8), 0.0)       # the level grows: K changes
    with pytest.raises(SplatIndexError, match=r"built for splats of shape \(2, 18, 8\)"): sparse_splat_attention(q, k, v, reg.stacked(), 4, index)
    index.update(reg.stacked())
    with torch.no_grad():
        out, _ = sparse_splat_attention(q, k, v, reg.stacked(), 4, index)
        assert rel_err(out, sparse_reference_attention(q, k, v, reg.stacked(), 4)) <= 1e-5

def test_kmeans_finds_separated_clusters_and_is_deterministic():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(40, 3) * 0.2 + 5 * torch.eye(3)[i] for i in range(3)] + [torch.randn(40, 3) * 0.2])
    c1, a1 = kmeans(x, 4, seed=3); c2, a2 = kmeans(x, 4, seed=3)
    assert torch.equal(c1, c2) and sorted(torch.bincount(a1).tolist()) == [40, 40, 40, 40]

# --- bad input

def _ok():
    reg = _reg(2, 8, (4,)); sp = reg.stacked(); q, k, v = _inputs(1, 2, 2, 10, 10, 8)
    return q, k, v, sp

BAD = {
    "m = 0": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=0), AttentionInputError, "m must be an int in [1, K=8]"),
    "m > K": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=9), AttentionInputError, "m must be an int in [1, K=8]"),
    "m float": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=2.0), AttentionInputError, "m must be an int"),
    "m bool": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=True), AttentionInputError, "m must be an int"),
    "3-D query": (lambda q, k, v, sp: dict(q=q[0], k=k, v=v, splats=sp, m=2), AttentionInputError, "q must be a 4-D tensor"),
    "head mismatch": (lambda q, k, v, sp: dict(q=q[:, :3], k=k, v=v, splats=sp, m=2), AttentionInputError, "multiple of key/value heads"),
    "short values": (lambda q, k, v, sp: dict(q=q, k=k, v=v[:, :, :9], splats=sp, m=2), AttentionInputError, "must match k"),
    "NaN query": (lambda q, k, v, sp: dict(q=q.masked_fill(q > 1, math.nan), k=k, v=v, splats=sp, m=2), AttentionInputError, "q contains NaN"),
    "inf value": (lambda q, k, v, sp: dict(q=q, k=k, v=v.masked_fill(v > 1, math.inf), splats=sp, m=2), AttentionInputError, "v contains NaN or inf"),
    "NaN splat": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp | {"log_sigma": sp["log_sigma"].detach() * math.nan}, m=2), AttentionInputError, "splat log_sigma is NaN/inf"),
    "NaN coef": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp | {"log_coef": sp["log_coef"].detach().index_fill(1, torch.tensor([0]), math.nan)}, m=2), AttentionInputError, "splat log_coef is NaN/inf"),
    "mask shape": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=2, key_mask=torch.ones(1, 9, dtype=torch.bool)), AttentionInputError, "key_mask must have shape"),
    "chunk 0": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=2, causal=True, chunk=0), AttentionInputError, "chunk must be an int >= 1"),
    "splat dim": (lambda q, k, v, sp: dict(q=q[..., :4], k=k[..., :4], v=v, splats=sp, m=2), AttentionInputError, "splats are for 2 heads of dim 8"),
    "index shape": (lambda q, k, v, sp: dict(q=q, k=k, v=v, splats=sp, m=2, index=ExactIndex(_reg(2, 8, (5,)).stacked())), SplatIndexError, "built for splats of shape (2, 10, 8)"),
}

@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_by_name(case):
    make, exc, msg = BAD[case]
    with pytest.raises(exc, match=re.escape(msg)):
        sparse_splat_attention(**make(*_ok()))

def test_bad_index_requests():
    q, k, v, sp = _ok(); ex, ivf = ExactIndex(sp), IVFIndex(sp)
    for index in (ex, ivf):
        with pytest.raises(SplatIndexError, match=r"m must be an int in \[1, K=8\]"): index.search(q[:, :2], 0)
        with pytest.raises(SplatIndexError, match="the index is for 2 heads of dim 8"): index.search(q[:, :1], 2)
        with pytest.raises(SplatIndexError, match="must be a 4-D tensor"): index.search(q[0], 2)
        with pytest.raises(SplatIndexError, match="bias must have shape"): index.search(q[:, :2], 2, torch.zeros(1, 2, 7))
    with pytest.raises(SplatIndexError, match="nprobe must be an int >= 1"): IVFIndex(sp, nprobe=0)
    with pytest.raises(SplatIndexError, match="nprobe must be >= 1"): ivf.search(q[:, :2], 2, nprobe=-1)
    with pytest.raises(SplatIndexError, match="head 0 has no live splats"): IVFIndex(sp | {"log_coef": torch.full_like(sp["log_coef"], -math.inf)})
    with pytest.raises(SplatIndexError, match=r"1 <= k <= number of points \(5\)"): kmeans(torch.randn(5, 2), 6)
    assert issubclass(SplatIndexError, ValueError)

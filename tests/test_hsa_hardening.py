"Hardening of the HSA core: levels alive at init, splat values validated, registry links and ids, optimizer state, versions."
import math, warnings
import pytest, torch
from hsa_lib.hsa.splats import SplatConfig, SplatError, SplatRegistry
from hsa_lib.hsa.attention import (AttentionInputError, HSAttention, attention_by_level, calibrate_levels, log_features,
                                   reference_attention, rel_err, splat_attention)
from hsa_lib.hsa.sparse import IVFIndex, SplatIndexError, sparse_splat_attention

def _qkv(h=2, n=32, d=8, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, n, d, generator=g) * scale for _ in range(3))

# --- 1. kernel and level balance -------------------------------------------------------------------------------

def test_kernel_is_peak_normalized():
    "φ_s(μ_s) = 1 for diagonal and low-rank splats: no −½log|Σ| (counted twice in φ(q)φ(k))."
    mu, ls = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    u = torch.randn(2, 3, 16, 2) * 0.5
    for uu in (None, u):
        at_centre = log_features(mu[None], mu, ls, uu).diagonal(dim1=-2, dim2=-1)
        assert at_centre.abs().max() < 1e-3

@pytest.mark.parametrize("window", [0, 16])
def test_every_level_carries_attention_at_init(window):
    "At d = 64 every level (and the hybrid's window) gets > 5% of the attention at init (was ≈3e-21 for level 1)."
    reg = SplatRegistry(SplatConfig(n_heads=4, head_dim=64, level_sizes=(16, 8, 4), local_window=window), seed=0)
    q, k, _ = _qkv(4, 256, 64)
    lw = reg.hierarchy.log_weight("local") if window else 0.0
    shares = attention_by_level(q, k, reg.stacked(), window, lw).detach()
    assert (shares > 0.05).all(), shares

def test_calibrate_levels_on_real_keys():
    "Keys at another scale unbalance the init calibration; calibrating on them rebalances every level."
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=32, level_sizes=(8, 4, 2)), seed=0)
    q, k, _ = _qkv(2, 200, 32, scale=2.5)
    calibrate_levels(reg, k, q)
    assert (attention_by_level(q, k, reg.stacked()).detach() > 0.05).all()
    assert torch.isfinite(reg.level_offset).all()

def test_factorized_still_equals_reference_with_offsets():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=16, level_sizes=(6, 3, 2), rank=2, local_window=5), seed=1)
    with torch.no_grad(): reg.u[0].normal_(0, 0.3)
    q, k, v = _qkv(2, 40, 16)
    for causal in (False, True):
        lw = reg.hierarchy.log_weight("local")
        out, _ = splat_attention(q, k, v, reg.stacked(), causal, chunk=16, local_window=5, log_w_local=lw)
        assert rel_err(out, reference_attention(q, k, v, reg.stacked(), causal, local_window=5, log_w_local=lw)) < 1e-5

# --- 2. splat values validated, free slots masked ---------------------------------------------------------------

def test_free_slot_values_do_not_leak():
    "NaN or huge values in free slots change nothing (they used to shift the centring mean or NaN the output)."
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(4, 2)), seed=0)
    q, k, v = _qkv()
    clean, _ = splat_attention(q, k, v, reg.stacked())
    for val in (math.nan, 1e6):
        with torch.no_grad(): reg.mu[0][:, -1] = val; reg.log_sigma[1][:, -1] = val
        out, _ = splat_attention(q, k, v, reg.stacked())
        assert torch.isfinite(out).all() and rel_err(out, clean) < 1e-6

@pytest.mark.parametrize("param,msg", [("mu", "splat mu is NaN/inf"), ("log_sigma", "splat log_sigma is NaN/inf"),
                                       ("log_amp", "splat log_coef is NaN/inf"), ("u", "splat u is NaN/inf")])
def test_live_non_finite_splat_is_named(param, msg):
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(4, 2), rank=2), seed=0)
    with torch.no_grad(): getattr(reg, param)[1][1, 0] = math.nan
    q, k, v = _qkv()
    with pytest.raises(AttentionInputError, match=f"{msg}.*level 1, head 1"): splat_attention(q, k, v, reg.stacked())
    with pytest.raises(SplatError, match=f"level 1 {param} is NaN/inf"): reg.check_finite()

def test_nan_level_logits_is_named():
    att = HSAttention(16, 2, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(4, 2)), seed=0)
    with torch.no_grad(): att.registry.hierarchy.level_logits[0] = math.nan
    with pytest.raises(SplatError, match="level_logits"): att(torch.randn(1, 5, 16))
    q, k, v = _qkv()
    with pytest.raises(AttentionInputError, match="hierarchy.level_logits"): splat_attention(q, k, v, att.registry.stacked())

def test_head_without_live_splats():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(2,)), seed=0)
    for s in reg.splats(head=1): reg.unregister(s.id)
    q, k, v = _qkv()
    with pytest.raises(AttentionInputError, match="head 1 has no live splats"): splat_attention(q, k, v, reg.stacked())

def test_nan_without_check_propagates_not_zeroed():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(4,)), seed=0)
    with torch.no_grad(): reg.mu[0][0, 0] = math.nan
    q, k, v = _qkv()
    out, _ = splat_attention(q, k, v, reg.stacked(), check=False)
    assert torch.isnan(out[0, 0]).all()

# --- 3. registry: ids, shapes, parent links, split covariance ----------------------------------------------------

def test_lookup_rejects_negative_ids():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,)), seed=0)
    with pytest.raises(SplatError, match="non-negative"): reg.lookup(-1)
    with pytest.raises(SplatError, match="non-negative"): reg.splat(-1)
    with pytest.raises(SplatError, match="non-negative"): reg.lookup("3")

def test_register_wrong_shape_log_sigma():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,)), seed=0)
    with pytest.raises(SplatError, match=r"log_sigma must be a number or have shape \(4,\), got \(3,\)"): reg.register(0, 0, torch.zeros(4), torch.zeros(3))
    with pytest.raises(SplatError, match="u must be finite with shape"): SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,), rank=1)).register(0, 0, torch.zeros(4), 0.0, u=torch.zeros(3, 1))

def test_parents_set_at_init_and_validated():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(6, 3, 2)), seed=0)
    for l in range(2):
        for s in reg.splats(level=l):
            lp, hp, _ = reg.lookup(s.parent); assert (lp, hp) == (l + 1, s.head)
    assert all(s.parent == -1 for s in reg.splats(level=2))
    other_head = reg.splats(level=1, head=1)[0].id
    with pytest.raises(SplatError, match="must be a live splat of level 1, head 0"): reg.register(0, 0, torch.zeros(8), 0.0, parent=other_head)

def test_split_keeps_links():
    "The split splat's children are re-pointed to the nearer new splat; both new splats keep its parent."
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(8, 2, 1)), seed=0)
    p = reg.splats(level=1)[0]; kids = [s.id for s in reg.splats(level=0) if s.parent == p.id]
    assert kids
    a, b = reg.split(p.id, torch.tensor([1.0, 0, 0, 0]))
    assert reg.splat(a).parent == reg.splat(b).parent == p.parent != -1
    for c in kids:
        s = reg.splat(c); d = [float(((s.mu - reg.splat(i).mu) / reg.splat(i).sigma).pow(2).sum()) for i in (a, b)]
        assert s.parent == (a, b)[d.index(min(d))]

def test_merge_keeps_links():
    "The merged splat takes the heavier one's parent, and adopts the children of both."
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(8, 3, 2)), seed=0)
    x, y = sorted(reg.splats(level=1), key=lambda s: -sum(c.parent == s.id for c in reg.splats(level=0)))[:2]
    with torch.no_grad(): reg.log_amp[1][0, y.slot] = 1.0
    kids = [s.id for s in reg.splats(level=0) if s.parent in (x.id, y.id)]; heavy_parent = y.parent
    m = reg.merge(x.id, y.id)
    assert reg.splat(m).parent == heavy_parent
    assert all(reg.splat(c).parent == m for c in kids) and kids

def test_split_keeps_mean_and_covariance_diagonal():
    "Mixture of the two children: same mean and same covariance diagonal, along any axis (what the docstring promises)."
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=3, level_sizes=(1,), rank=1), seed=0)
    with torch.no_grad(): reg.log_sigma[0][0, 0] = torch.tensor([0.3, -0.2, 0.1]); reg.u[0][0, 0] = torch.tensor([[0.5], [0.1], [-0.3]])
    s = reg.splats()[0]; mu0 = s.mu.clone()
    cov0 = torch.diag(s.sigma ** 2) + reg.u[0][0, 0].detach() @ reg.u[0][0, 0].detach().T
    a, b = reg.split(s.id, torch.tensor([1.0, 1.0, 0.0]))
    ca, cb = reg.splat(a), reg.splat(b)
    mix_mu = (ca.mu + cb.mu) / 2
    def cov(c): uu = reg.u[0][0, c.slot].detach(); return torch.diag(c.sigma ** 2) + uu @ uu.T
    mix_cov = (cov(ca) + cov(cb)) / 2 + 0.5 * (torch.outer(ca.mu - mix_mu, ca.mu - mix_mu) + torch.outer(cb.mu - mix_mu, cb.mu - mix_mu))
    assert torch.allclose(mix_mu, mu0, atol=1e-5)
    assert torch.allclose(mix_cov.diagonal(), cov0.diagonal(), atol=1e-5)

# --- 4. optimizer state, growth, devices, versions ---------------------------------------------------------------

def _train(reg, opt, steps=1):
    for _ in range(steps):
        opt.zero_grad(); st = reg.stacked()
        (st["mu"].sub(1.0).pow(2).sum() + st["log_sigma"].pow(2).sum()).backward(); opt.step()

def test_attach_optimizer_is_idempotent():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,)), seed=0)
    opt = torch.optim.Adam(reg.parameters(), lr=0.1)
    reg.attach_optimizer(opt); reg.attach_optimizer(opt)
    assert len(reg._optimizers) == 1

@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_reused_slot_takes_a_bias_corrected_first_step(cls):
    "After many steps, a splat born in a reused slot moves by ≈ lr on its first step (was ≈ 3.2 lr: shared step counter)."
    lr = 0.01
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(3,), capacity_factor=1.0), seed=0)
    opt = reg.attach_optimizer(cls(reg.parameters(), lr=lr, weight_decay=0.0))
    _train(reg, opt, 50)
    reg.unregister(reg.splats()[0].id); sid = reg.register(0, 0, torch.full((4,), -3.0), 0.0)
    slot = reg.lookup(sid)[2]; before = reg.mu[0][0, slot].detach().clone()
    _train(reg, opt, 1)
    step = (reg.mu[0][0, slot].detach() - before).abs()
    assert torch.allclose(step, torch.full_like(step, lr), rtol=0.02), step

def test_grow_keeps_requires_grad_and_optimizer():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,), capacity_factor=1.0), seed=0)
    reg.log_sigma[0].requires_grad_(False)
    opt = reg.attach_optimizer(torch.optim.Adam([p for p in reg.parameters() if p.requires_grad], lr=0.1)); _train(reg, opt)
    reg.grow(0)
    assert reg.capacity(0) == 4 and not reg.log_sigma[0].requires_grad and reg.mu[0].requires_grad
    assert any(p is reg.mu[0] for g in opt.param_groups for p in g["params"])

def test_stacked_level_follows_registry_device():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2, 1)), seed=0).to("meta")
    assert reg.stacked()["level"].device.type == "meta"

def test_amplitude_has_no_warning_and_no_overflow():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,)), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error"); a = reg.splats()[0].amplitude
    assert a == pytest.approx(1.0)
    with torch.no_grad(): reg.log_amp[0][0, 0] = 200.0
    assert math.isfinite(reg.splats()[0].amplitude)

def test_version_changes_on_every_structural_edit_and_index_notices():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(8,)), seed=0)
    v = reg.version; q, k, v_ = _qkv(1, 16, 4)
    idx = IVFIndex(reg.stacked(), nprobe=2)
    sparse_splat_attention(q, k, v_, reg.stacked(), 2, idx)
    reg.unregister(reg.splats()[0].id); reg.register(0, 0, torch.full((4,), 5.0), 0.0)   # same slot, same alive mask, another splat
    assert reg.version == v + 2; v = reg.version
    with pytest.raises(SplatIndexError, match="built at registry version"): sparse_splat_attention(q, k, v_, reg.stacked(), 2, idx)
    idx.update(reg.stacked()); sparse_splat_attention(q, k, v_, reg.stacked(), 2, idx)
    a, b = reg.split(reg.splats()[0].id, torch.ones(4)); assert reg.version > v; v = reg.version
    for edit in (lambda: reg.merge(a, b), lambda: reg.unregister(reg.splats()[0].id), lambda: reg.register(0, 0, torch.zeros(4), 0.0), lambda: reg.grow(0)):
        edit(); assert reg.version > v; v = reg.version

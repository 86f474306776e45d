"HTFR tensors, field, index, adaptation and diagnostics."
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import HsaLibError
from hsa_lib.htfr.hypertensor import HyperTensorStack, interp_weights
from hsa_lib.htfr.field import HTFR, PrefilterIndex, OnlineFieldUpdate, topk_exact, recall_at_k, place_through
from hsa_lib.htfr.adapt import UsageStats, HighLossQueue, relocate, random_init, kmeans_init, kmeans
from hsa_lib.htfr.diagnostics import projection_fidelity, coverage, r2_linear, toy_field, toy_field_figure, toy_field_widget
from hsa_lib.htfr.sketch import SRHT

@settings(max_examples=25, deadline=None)
@given(d=st.floats(-10, 10), lo=st.floats(0.01, 5), hi=st.floats(0.01, 5), kind=st.sampled_from(["linear", "hermite"]))
def test_interp_weights_sum_to_one_and_hit_controls(d, lo, hi, kind):
    dd = torch.tensor(d).clamp(-lo, hi)
    a = interp_weights(dd, torch.tensor(-lo), torch.tensor(hi), kind)
    assert abs(a.sum().item() - 1) < 1e-5
    if kind == "linear": assert (a >= -1e-7).all()
    if d >= hi: torch.testing.assert_close(a, torch.tensor([0., 0., 1.]))
    if d <= -lo: torch.testing.assert_close(a, torch.tensor([1., 0., 0.]))

def test_negative_side_uses_v_minus():
    a = interp_weights(torch.tensor(-0.25), torch.tensor(-0.5), torch.tensor(1.0))
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5, 0.0]))

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_topk_exact_is_the_sorted_prefix_of_all_distances(n, k, seed):
    k = min(k, n); g = torch.Generator().manual_seed(seed)
    nr = torch.nn.functional.normalize(torch.randn(n, 7, generator=g), dim=1); off = torch.randn(n, generator=g); x = torch.randn(3, 7, generator=g)
    i, r = topk_exact(x, nr, off, k)
    torch.testing.assert_close(r, (x @ nr.T + off).abs().sort(1).values[:, :k])
    torch.testing.assert_close((x.unsqueeze(1) * nr[i]).sum(-1).add(off[i]).abs(), r, atol=1e-5, rtol=1e-5)

def test_field_forward_backward_and_fp16_storage():
    f = HTFR(6, 2, n=40, k=5, param_dtype=torch.float16)
    y = f(torch.randn(9, 6)); assert y.shape == (9, 2) and y.dtype == torch.float32
    f32 = HTFR(6, 2, n=40, k=5); f32(torch.randn(9, 6)).pow(2).sum().backward()
    assert all(p.grad is not None for p in f32.parameters())

def test_bad_field_inputs():
    f = HTFR(4, 1, n=8, k=2)
    with pytest.raises(HsaLibError, match=r"\[batch, 4\]"): f(torch.randn(2, 5))
    with pytest.raises(HsaLibError, match="NaN/inf"): f(torch.tensor([[0., float("nan"), 0., 0.]]))
    with pytest.raises(ValueError, match="K must be"): HTFR(4, 1, n=8, k=9)
    with pytest.raises(ValueError, match="tau"): HTFR(4, 1, n=8, k=2, tau=0)
    with pytest.raises(ValueError, match="interpolation"): HyperTensorStack(3, 2, 1, interp="cubic")
    with pytest.raises(ValueError, match="K must be"): topk_exact(torch.randn(1, 4), torch.randn(3, 4), torch.zeros(3), 4)

def _subspace_data(seed=0, d=128, r=8, n=300):
    g = torch.Generator().manual_seed(seed); U = torch.linalg.qr(torch.randn(d, r, generator=g)).Q
    return U, torch.randn(n, r, generator=g) @ U.T * 4 + 0.02 * torch.randn(n, d, generator=g)

def test_index_matches_exact_on_a_known_fixture_and_prunes():
    U, x = _subspace_data(); f = HTFR(128, 1, n=3000, k=4); random_init(f.stack, x[:200], span=U)
    f.index = PrefilterIndex(f.stack, x[:200], rank=16)
    ie, re_ = topk_exact(x[200:216], f.stack.unit_normals(), f.stack.offset, 4); ia, ra = f.select(x[200:216])
    assert recall_at_k(ia, ie) == 1.0 and f.index.last["path"] != "exact" and f.index.last["candidates_per_query"] < 100
    torch.testing.assert_close(ra, re_, atol=1e-4, rtol=1e-4)
    f.index = None; torch.testing.assert_close(f.select(x[200:216])[1], re_)

@settings(max_examples=20, deadline=None)
@given(n=st.integers(5, 300), k=st.integers(1, 5), r=st.integers(1, 12), noise=st.sampled_from([0.0, 1e-3, 0.1, 1.0]),
       aligned=st.booleans(), seed=st.integers(0, 10_000))
def test_certified_index_returns_the_exact_top_k(n, k, r, noise, aligned, seed):
    g = torch.Generator().manual_seed(seed); U = torch.linalg.qr(torch.randn(24, 4, generator=g)).Q
    x = torch.randn(40, 4, generator=g) @ U.T + noise * torch.randn(40, 24, generator=g)
    s = HyperTensorStack(n, 24, 1, seed=seed); random_init(s, x[:20], span=U if aligned else None, seed=seed)
    ix = PrefilterIndex(s, x[:20], rank=r)
    _, ra = ix.search(x[20:], k); _, re_ = topk_exact(x[20:], s.unit_normals(), s.offset, k)
    torch.testing.assert_close(ra, re_, atol=1e-4, rtol=1e-4)

def test_index_stays_current_incrementally_under_relocation():
    U, x = _subspace_data(1); f = HTFR(128, 1, n=2000, k=4, tau=0.3); random_init(f.stack, x[:200], span=U)
    f.index = PrefilterIndex(f.stack, x[:200], rank=16); before = f.index.unit.clone()
    stats, q = UsageStats(2000), HighLossQueue(20, 128, 1)
    q.push(x[200:220], torch.zeros(20, 1), torch.arange(20.)); stats.usage[:] = 1; stats.usage[:7] = 0
    assert relocate(f, stats, q, threshold=0.5, max_moves=7)["moved"] == 7
    changed = (f.index.unit - before).abs().sum(1) > 0
    assert changed[:7].all() and not changed[7:].any()  # only the moved rows were refreshed
    fresh = PrefilterIndex(f.stack, x[:200], rank=16)
    for a in ("unit", "proj", "resid"): torch.testing.assert_close(getattr(f.index, a), getattr(fresh, a), atol=1e-5, rtol=1e-5)
    assert f.index.resid[:7].min() > 0.5  # relocated with Gaussian normals: out of the basis, bound loosened, still exact
    ie, re_ = topk_exact(x[220:], f.stack.unit_normals(), f.stack.offset, 4); ia, ra = f.select(x[220:])
    torch.testing.assert_close(ra, re_, atol=1e-4, rtol=1e-4)

def test_bad_index_inputs():
    U, x = _subspace_data(); s = HyperTensorStack(50, 128, 1); ix = PrefilterIndex(s, x[:40])
    with pytest.raises(HsaLibError, match=r"\[batch, 128\]"): ix.search(torch.randn(2, 127), 3)
    with pytest.raises(HsaLibError, match="NaN/inf"): ix.search(torch.full((1, 128), float("inf")), 3)
    with pytest.raises(ValueError, match="K must be"): ix.search(x[:2], 51)
    with pytest.raises(ValueError, match="z must be"): PrefilterIndex(s, x[:40], z=-1.0)
    with pytest.raises(ValueError, match="energy"): PrefilterIndex(s, x[:40], energy=0.0)
    with pytest.raises(HsaLibError): PrefilterIndex(s, torch.randn(10, 64))
    with pytest.raises(ValueError, match="span must be"): random_init(s, x, span=torch.randn(127, 4))

def test_online_rule_reduces_loss():
    torch.manual_seed(0); x = torch.rand(1000, 2) * 4 - 2; y = torch.sin(x[:, :1]) + x[:, 1:] ** 2 / 4
    f = HTFR(2, 1, n=48, k=4, tau=0.3); random_init(f.stack, x)
    opt = OnlineFieldUpdate(f, lr=1.0); L = [opt.step((x[j], y[j])) for j in torch.randint(0, 1000, (200, 64))]
    assert sum(L[-20:]) < 0.5 * sum(L[:20])
    with pytest.raises(ValueError): OnlineFieldUpdate(f, lr=0)

def test_kmeans_init_relocation_and_queue_bounds():
    torch.manual_seed(1); x = torch.rand(600, 2) * 4 - 2; y = torch.cos(x[:, :1] * 2)
    f = HTFR(2, 1, n=32, k=3, tau=0.3); kmeans_init(f.stack, x, y)
    with torch.no_grad(): assert ((f(x) - y) ** 2).mean() < y.var()
    with pytest.raises(ValueError, match="k <="): kmeans(x[:5], 6)
    stats, q = UsageStats(32), HighLossQueue(10, 2, 1)
    with torch.no_grad():
        for j in torch.randint(0, 600, (5, 100)):
            per = ((f(x[j]) - y[j]) ** 2).mean(1); stats.update(f.last["idx"], f.last["w"], per); q.push(x[j], y[j], per)
    assert len(q) == 10 and (q.loss[:-1] >= q.loss[1:]).all()
    stats.usage[:4] = 0
    rep = relocate(f, stats, q, threshold=0.01, max_moves=4)
    assert rep["moved"] == 4 and rep["loss_after"] <= rep["loss_before"] + 1e-6

def test_diagnostics_and_widget():
    x = torch.randn(32, 2048); fid = projection_fidelity(x, SRHT(2048, 512)(x)); assert not fid["flag"]
    assert projection_fidelity(x, SRHT(2048, 4)(x))["flag"]
    f = toy_field(10, 3, 0.3); cov = coverage(f, torch.rand(200, 2) * 4 - 2)
    assert abs(cov["frequency"].sum().item() - 3) < 1e-4
    z = torch.randn(50, 3); assert r2_linear(z, z[:, :1] * 2) > 0.999
    assert len(toy_field_figure(f, res=10).data) == 1 + 3 * 10
    w = toy_field_widget(); w.children[0].children[0].value = 6; assert len(w.children[1].outputs) == 1

@settings(max_examples=20, deadline=None)
@given(n=st.integers(8, 400), k=st.integers(1, 8), d=st.sampled_from([7, 64, 300]), scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 10_000))
def test_fp16_scan_returns_the_fp32_top_k(n, k, d, scale, seed):
    from hsa_lib.htfr.field import topk_fp16
    g = torch.Generator().manual_seed(seed); w = (torch.randn(n, d, generator=g) * 2).half()
    nr = torch.linalg.vector_norm(w, dim=1, dtype=torch.float32); off = torch.randn(n, generator=g) * scale; x = torch.randn(2, d, generator=g) * scale
    _, r16 = topk_fp16(x, w, off, k, nr)
    ref = (x.double() @ w.double().T / nr.double() + off.double()).abs().sort(1).values[:, :k]
    torch.testing.assert_close(r16.double(), ref, atol=1e-5 * (1 + scale), rtol=1e-5)

def test_fp16_gemv_error_is_inside_the_bound():
    g = torch.Generator().manual_seed(0); w = torch.nn.functional.normalize(torch.randn(3000, 1024, generator=g), dim=1).half()
    x = torch.randn(1, 1024, generator=g) * 3; x16 = x.half(); raw = (x16 @ w.T).float()
    bound = (x - x16.float()).norm() + 1024 * 2 ** -24 * x16.float().norm() + 2 ** -10 * raw.abs()
    assert ((raw.double() - x.double() @ w.double().T).abs() <= bound.double()).all()

def test_fp16_field_selects_like_fp32():
    f = HTFR(64, 1, n=500, k=5, param_dtype=torch.float16); x = torch.randn(1, 64)
    i, r = f.select(x); s = f.stack
    ie, re_ = topk_exact(x, s.unit_normals().detach(), s.offset.detach(), 5)
    torch.testing.assert_close(r, re_, atol=1e-5, rtol=1e-5)

def test_index_basis_size_follows_the_energy_target():
    U, x = _subspace_data(2, r=5); s = HyperTensorStack(30, 128, 1)
    assert PrefilterIndex(s, x[:40], rank=64, energy=0.9).basis.shape[1] <= 5
    ix = PrefilterIndex(s, x[:10], rank=64, energy=1.0)  # never more directions than the sample has
    assert ix.basis.shape[1] <= 10 and ix.proj.shape == (30, ix.basis.shape[1])
    torch.testing.assert_close(ix.search(x[10:14], 3)[1], topk_exact(x[10:14], s.unit_normals(), s.offset, 3)[1], atol=1e-4, rtol=1e-4)

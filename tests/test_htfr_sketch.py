"HTFR sketches: CountSketch, FWHT, SRHT, n-gram indicators, PCA and the projection stack."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import HsaLibError, CorruptFileError
from hsa_lib.htfr.sketch import (CountSketch, SRHT, PCAWhitener, ProjectionStack, HTFRShapeError, HTFRValueError,
                                 fwht, fwht_radix2_, hadamard_factors, ngram_indicators, save_stack, load_stack, check_features)

@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 300), m=st.integers(1, 64), seed=st.integers(0, 2**31 - 1), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_countsketch_is_linear_and_sparse_matches_dense(d, m, seed, a, b):
    cs = CountSketch(d, m, seed); g = torch.Generator().manual_seed(seed)
    x, z = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
    torch.testing.assert_close(cs(a * x + b * z), a * cs(x) + b * cs(z), atol=1e-4, rtol=1e-4)
    xs = x * (torch.rand(3, d, generator=g) < 0.3)
    torch.testing.assert_close(cs(xs.to_sparse()), cs(xs), atol=1e-5, rtol=1e-5)

@settings(max_examples=15, deadline=None)
@given(k=st.integers(0, 12), seed=st.integers(0, 1000))
def test_fwht_matches_radix2_and_is_an_involution_up_to_P(k, seed):
    P = 2 ** k; x = torch.randn(2, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(fwht(x, max_block=8), fwht_radix2_(x.clone()))
    torch.testing.assert_close(fwht(fwht(x)) / P, x)
    assert math.prod(hadamard_factors(P, 8)) == P and max(hadamard_factors(P, 8)) <= 8

@settings(max_examples=15, deadline=None)
@given(d=st.integers(2, 700), seed=st.integers(0, 1000), views=st.integers(1, 3))
def test_srht_is_linear_seeded_and_pads(d, seed, views):
    m = max(1, d // 4); sr = SRHT(d, m, views, seed)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    y = sr(x); assert y.shape == (4, m * views)
    torch.testing.assert_close(sr(2 * x), 2 * y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(SRHT(d, m, views, seed)(x), y)
    assert sr.P >= d and sr.P & (sr.P - 1) == 0

def test_srht_preserves_norms_on_average():
    sr = SRHT(8192, 1024, seed=3); x = torch.randn(128, 8192)
    r = sr(x).norm(dim=1) / x.norm(dim=1)
    assert abs(r.mean().item() - 1) < 0.02 and r.std().item() < 1.25 * math.sqrt(2 / 1024)

def test_fp16_in_fp32_accumulate_fp16_out():
    x = torch.randn(2, 5000) * 30
    for mod in (CountSketch(5000, 256), SRHT(5000, 256)):
        y16 = mod(x.half()); assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
        torch.testing.assert_close(y16.float(), mod(x.half().float()), atol=0.1, rtol=1e-2)

def test_ngram_indicators_order_sensitive_and_binary():
    ind = ngram_indicators(torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]]), n_buckets=1 << 12).to_dense()
    assert set(ind.unique().tolist()) <= {0.0, 1.0} and not torch.equal(ind[0], ind[1])
    with pytest.raises(HTFRShapeError): ngram_indicators(torch.tensor([1, 2, 3]))

def test_pca_whitens_and_stack_round_trips(tmp_path):
    st_ = ProjectionStack(3000, 128, views=2, countsketch=2048, pca=16, seed=5)
    x = torch.randn(200, 3000); st_.pca.fit(st_(x, use_pca=False))
    z = st_(x); torch.testing.assert_close(torch.cov(z.T), torch.eye(16), atol=0.05, rtol=0)
    st2 = load_stack(save_stack(st_, tmp_path/"s"))
    torch.testing.assert_close(st2(x[:4]), z[:4])
    (tmp_path/"s.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError): load_stack(tmp_path/"s")

@pytest.mark.parametrize("bad,msg", [(torch.randn(2, 99), "[batch, 100]"), (torch.randn(100), "[batch, 100]"),
                                     (torch.tensor([[float("nan")] * 100]), "NaN/inf"), (torch.tensor([[float("inf")] * 100]), "NaN/inf")])
def test_bad_inputs_raise_clear_errors(bad, msg):
    for mod in (CountSketch(100, 8), SRHT(100, 8), PCAWhitener(100, 4)):
        with pytest.raises(HsaLibError, match=msg.replace("[", r"\[").replace("]", r"\]")): mod(bad)
    sp = torch.sparse_coo_tensor(torch.tensor([[0], [1]]), torch.tensor([float("nan")]), (1, 100))
    with pytest.raises(HTFRValueError): CountSketch(100, 8)(sp)
    with pytest.raises(ValueError): SRHT(100, 1000)
    with pytest.raises(ValueError): PCAWhitener(10, 11)

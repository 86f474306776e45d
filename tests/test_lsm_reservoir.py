"LSM reservoir and reservoir-computing benchmarks: semantics, bad input, parity with reservoirpy."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.lsm.reservoir import (LSMError, Reservoir, ReservoirConfig, SineActivation, recurrent_matrix, spectral_radius,
                                   without_recurrence, _run_layer_cpu, _run_layer_torch, _np_act)
from hsa_lib.lsm.rc import RidgeReadout, forecast, mackey_glass, memory_capacity

@settings(max_examples=15, deadline=None)
@given(rho=st.floats(0.05, 3.0), n=st.integers(8, 60), seed=st.integers(0, 10_000))
def test_spectral_radius_is_exact(rho, n, seed):
    W = recurrent_matrix(n, rho, density=0.5, generator=torch.Generator().manual_seed(seed))
    assert math.isclose(spectral_radius(W), rho, rel_tol=1e-9)

@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_nonpositive_spectral_radius_is_an_error(bad):
    with pytest.raises(LSMError, match="spectral radius"): recurrent_matrix(10, bad)
    with pytest.raises(LSMError, match="spectral radius"): Reservoir(spectral_radius=bad)

def test_wrong_dtype_and_shape_are_errors():
    r = Reservoir(input_dim=3, units=10)
    with pytest.raises(LSMError, match="floating point"): r(torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(LSMError, match=r"\[t 3\]"): r(torch.zeros(5, 4))
    with pytest.raises(LSMError, match="leak_rate"): Reservoir(leak_rate=1.5)
    with pytest.raises(LSMError, match="unknown activation"): Reservoir(activation="relu")
    with pytest.raises(LSMError, match="dtype"): Reservoir(dtype="float16")

@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 39), layers=st.integers(1, 3), act=st.sampled_from(["tanh", "sine"]))
def test_stateful_split_equals_one_pass(split, layers, act):
    cfg = ReservoirConfig(input_dim=2, units=16, layers=layers, activation=act, dtype="float64", seed=3)
    u = torch.randn(3, 40, 2, dtype=torch.float64)
    full = Reservoir(cfg)(u); s = Reservoir(cfg, stateful=True)
    parts = torch.cat([s(u[:, :split]), s(u[:, split:])], 1)
    assert torch.allclose(parts, full, atol=1e-12)
    s.reset(); assert torch.allclose(s(u[:, :split]), full[:, :split], atol=1e-12)

def test_batched_equals_one_by_one_and_float64():
    r = Reservoir(input_dim=1, units=300, dtype="float64")  # 300 units: the sparse single-sequence path
    u = torch.randn(4, 30, 1, dtype=torch.float64); x = r(u)
    assert x.dtype == torch.float64 and x.shape == (4, 30, 300)
    for i in range(4): assert torch.allclose(r(u[i]), x[i], atol=1e-12)

@pytest.mark.parametrize("act", [torch.tanh, SineActivation(amplitude=0.7, decay=0.3, frequency=2.0)])
def test_numpy_and_torch_paths_agree(act):
    pre = torch.randn(1, 25, 64, dtype=torch.float64); W = recurrent_matrix(64, 1.1); x = torch.randn(1, 64, dtype=torch.float64)
    assert torch.allclose(_run_layer_cpu(pre, W, x, 0.4, _np_act(act)), _run_layer_torch(pre, W, x, 0.4, act), atol=1e-12)

def test_recurrence_off_and_echo_state():
    r = Reservoir(input_dim=1, units=50, spectral_radius=0.8, leak_rate=0.5, dtype="float64")
    assert without_recurrence(r).W0.abs().sum() == 0 and r.W0.abs().sum() > 0
    u = torch.rand(1, 400, 1, dtype=torch.float64)
    d = (r(u, state=torch.randn(1, 50, dtype=torch.float64)) - r(u)).abs().max(-1).values[0]
    assert d[-1] < 1e-6 * d[0]

def test_reservoirpy_parity():
    pytest.importorskip("reservoirpy")
    from hsa_lib.lsm.bench import parity_max_abs_diff
    assert parity_max_abs_diff(100, 300) <= 1e-10
    assert parity_max_abs_diff(60, 200, activation="sine") <= 1e-10

def test_mackey_glass_one_step_target():
    mg = mackey_glass(2000)
    f = forecast(mg, Reservoir(units=100, spectral_radius=1.25, leak_rate=0.3, dtype="float64"), 1, 500, 100, 1e-6)
    assert f["rmse"] <= 2.5e-3
    with pytest.raises(LSMError, match="too short"): forecast(mg[:300], Reservoir(units=10, dtype="float64"), 1, 500, 100)

def test_ridge_and_memory_capacity():
    X = torch.randn(300, 5, dtype=torch.float64); W = torch.randn(5, 1, dtype=torch.float64)
    assert torch.allclose(RidgeReadout(1e-10).fit(X, X @ W)(X), X @ W, atol=1e-6)
    with pytest.raises(LSMError, match="before fit"): RidgeReadout()(X)
    mc, r2 = memory_capacity(ReservoirConfig(units=30, spectral_radius=0.9, dtype="float64"), 20, 600)
    assert 0 < mc <= 30 and len(r2) == 20 and ((r2 >= 0) & (r2 <= 1 + 1e-9)).all()
    with pytest.raises(LSMError, match="input_dim 1"): memory_capacity(ReservoirConfig(input_dim=2))

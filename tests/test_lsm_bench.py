"LSM benchmark pieces: registration, bootstrap intervals, parameter matching, reservoirpy absent."
import subprocess, sys
import torch
from hypothesis import given, settings, strategies as st
from conftest import ROOT, run
from hsa_lib.bench import discover_benchmarks, BENCHMARKS
from hsa_lib.lsm.bench import bootstrap_ci, gru_hidden_for, GRULM, n_trainable, mg_figures
from hsa_lib.lsm.embedding import SinusoidalEmbedder

def test_registered():
    assert "lsm" in discover_benchmarks() and BENCHMARKS["lsm"].__module__ == "hsa_lib.lsm.bench"

@settings(max_examples=20, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=1, max_size=200))
def test_bootstrap_interval_brackets_mean(bits):
    m, lo, hi = bootstrap_ci(torch.tensor(bits), n=200)
    assert 0 <= lo <= m + 1e-9 and m - 1e-9 <= hi <= 1

def test_gru_is_parameter_matched():
    for target in (5_000, 20_000, 80_000):
        g = GRULM(SinusoidalEmbedder(50, 32), gru_hidden_for(target, 32))
        assert abs(n_trainable(g) - target) / target < 0.05

def test_mackey_glass_figures_without_reservoirpy_baseline():
    f = mg_figures(quick=True, rpy=False)
    assert set(f) == {"mg_rmse_100", "mg_nrmse_500_h84_tanh", "mg_nrmse_500_h84_sine"} and all(b is None for _, b in f.values())
    assert f["mg_rmse_100"][0] <= 2.5e-3

def test_reservoirpy_absent_is_detected():
    code = "import sys; sys.modules['reservoirpy'] = None\nfrom hsa_lib.lsm.bench import reservoirpy_or_none\nassert reservoirpy_or_none() is None\nprint('ok')"
    assert run([sys.executable, "-c", code]).stdout.strip() == "ok"

def test_gru_softmax_head_is_parameter_matched():
    V, d = 300, 16
    for target in (V * d + 5_000, V * d + 40_000):
        g = GRULM(SinusoidalEmbedder(V, d), gru_hidden_for(target, d, V), "softmax")
        assert abs(n_trainable(g) - target) / target < 0.05 and g(torch.randint(V, (2, 7))).shape == (2, 7, V)

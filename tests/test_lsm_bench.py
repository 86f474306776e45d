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

# --- k-fold language-model evaluation (lm_top10_acc) ---
from hsa_lib.lsm.bench import cv_fold, cv_split, lm_fold, lm_documents, LM_CONFIG, LM_NAMES
from hsa_lib.lsm.reservoir import LSMError
import pytest

@settings(max_examples=20, deadline=None)
@given(vals=st.lists(st.booleans(), min_size=2, max_size=120), ngroups=st.integers(1, 10))
def test_group_bootstrap_bounds_and_self_difference(vals, ngroups):
    h = torch.tensor(vals); g = torch.arange(len(vals)) % ngroups
    m, lo, hi = bootstrap_ci(h, n=100, groups=g)
    assert 0 <= lo <= hi <= 1 and abs(m - h.double().mean().item()) < 1e-9
    assert bootstrap_ci(h, n=20, groups=g, minus=h) == (0.0, 0.0, 0.0)

def test_group_bootstrap_resamples_whole_groups():
    # two documents, all hits in one, none in the other: every draw is 0, 0.5 or 1 (never a token-level mixture)
    h = torch.tensor([1.] * 50 + [0.] * 50); g = torch.tensor([0] * 50 + [1] * 50)
    _, lo, hi = bootstrap_ci(h, n=200, groups=g)
    assert lo in (0.0, 0.5) and hi in (0.5, 1.0)
    _, lo_tok, hi_tok = bootstrap_ci(h, n=200)  # i.i.d. tokens: a much narrower (wrong) interval
    assert hi_tok - lo_tok < hi - lo

def test_cv_folds_partition_documents():
    docs = [(f"k{i}", [i, i + 1]) for i in range(60)]
    held = [k for f in range(5) for k, _ in cv_split(docs, f)[1]]
    assert sorted(held) == sorted(k for k, _ in docs)  # each document held out exactly once
    assert all(cv_fold(k) == cv_fold(k) in range(5) for k, _ in docs)
    for f in range(5):
        tr, te = cv_split(docs, f); vtr, va = cv_split(docs, f, val=True)
        assert not {k for k, _ in tr} & {k for k, _ in te} and {k for k, _ in vtr + va} == {k for k, _ in tr}
        assert not {k for k, _ in vtr} & {k for k, _ in va}
    with pytest.raises(LSMError, match="fold"): cv_split(docs, 7)

def test_shipped_texts_hold_100k_tokens():
    docs = lm_documents()
    assert sum(len(s) for _, s in docs) >= 100_000 and len(docs) > 500

def test_lm_fold_scores_every_held_out_token():
    g = torch.Generator().manual_seed(0)
    docs = [(f"d{i}", torch.randint(100, 140, (60,), generator=g).tolist()) for i in range(12)]
    tr, te = docs[:9], docs[9:] + [("new", [999, 998, 100])]  # unseen ids: unknown targets
    out = lm_fold(tr, te, steps=3, config=LM_CONFIG | {"units": 20, "embed_dim": 8})
    n = sum(len(s) for _, s in te) - 1
    assert len(out["keys"]) == n and out["keys"][-1] == "new"
    for name in LM_NAMES:
        assert out[name].shape == (n,) and out[name].dtype == torch.bool
        assert not out[name][-3:-1].any()  # targets 999 and 998 are outside the training vocabulary: a miss for every model
    assert out["gru_params"] > 0 and out["lsm_params"] == out["recurrence_off_params"]

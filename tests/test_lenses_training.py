"Lens training with group-disjoint validation (template and phrase), the shipped pack rebuilt from its source, and the bf16-storage bank."
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.lenses.concepts import build_pack_from_source, load_default_pack, pack_source
from hsa_lib.lenses.training import TrainConfig, _calibrate, f1_score, group_folds, pack_groups, template_groups, train_classifier
from hsa_lib.lenses.bank import KEYS, LensBank, load_lens_pack, loop_modules, random_lens_tensors, save_lens_pack, score_stacked
from hsa_lib.lenses.classifiers import normalize

# ---------- group-disjoint validation ----------
@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 15)), min_size=1, max_size=80), st.integers(2, 5), st.integers(0, 100))
def test_group_folds_never_share_template_or_phrase(groups, k, seed):
    G = torch.tensor(groups); folds = group_folds(G, len(G), k, seed)
    assert len(folds) == k
    for tr, va in folds:
        assert not set(tr) & set(va)
        tv = {groups[i][0] for i in va if groups[i][0] >= 0}; tt = {groups[i][0] for i in tr if groups[i][0] >= 0}
        assert not tv & tt and not {groups[i][1] for i in va} & {groups[i][1] for i in tr}
    assert sorted(i for _, va in folds for i in va) == sorted(set(i for _, va in folds for i in va))   # each sample validated at most once

def test_template_groups_parse():
    ps = ["I saw a dog.", "We met a dog today.", "I saw a cat.", "Nothing here."]
    assert template_groups(ps, ["I saw {x}.", "We met {x} today."]).tolist() == [[0, 0], [1, 0], [0, 1], [-1, 2]]
    with pytest.raises(ValueError, match="rows"): group_folds(torch.zeros(3, 2, dtype=torch.long), 4, 2)

def test_every_training_positive_parses_to_a_training_template():
    pack = load_default_pack()
    for c in pack.concepts:
        ps, ys = pack.split(c, "train"); G = pack_groups(pack, c)
        assert all(G[i, 0] >= 0 for i, y in enumerate(ys) if y), c

def test_shipped_pack_is_its_source():
    if not pack_source().exists(): pytest.skip("source file not installed")
    assert build_pack_from_source(pack_source()).prompts == load_default_pack().prompts

def test_calibrated_threshold_separates():
    z, y = torch.tensor([-2., -1., 0.5, 1., 3.]), torch.tensor([0, 0, 0, 1, 1])
    thr = _calibrate(z, y); assert 0.5 < thr < 1.0 and f1_score(z, y, thr) == 1.0

def test_grouped_training_reports_out_of_fold_metrics():
    g = torch.Generator().manual_seed(0); y = (torch.arange(96) % 3 == 0).long()
    x = torch.randn(96, 16, generator=g) + 2 * y[:, None] * torch.randn(16, generator=g)
    G = torch.stack([torch.arange(96) % 4, torch.arange(96) // 4], 1)
    clf, m = train_classifier(x, y, TrainConfig(max_epochs=60), G)
    assert 0 < m["n_val"] < 96 and m["epochs"] >= 1 and torch.isfinite(torch.tensor(m["threshold"]))
    with pytest.raises(ValueError, match="too few"): train_classifier(x[:2], torch.tensor([0, 1]))

# ---------- bf16 storage ----------
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 20), st.integers(1, 6), st.sampled_from([None, 1, 3, 8]), st.integers(0, 1000))
def test_bf16_storage_equals_fp32_for_bf16_exact_weights(n, t, block, seed):
    w = {k: v.bfloat16().float() for k, v in random_lens_tensors(n, 24, hidden=(16, 8), seed=seed).items()}
    x = torch.randn(t, 24, generator=torch.Generator().manual_seed(seed))
    b16 = LensBank("m", 24, storage="bf16", block=block).add([f"c{i}" for i in range(n)], 0, w)
    assert all(v.dtype == torch.bfloat16 for v in b16.groups[0]["t"].values())
    with torch.no_grad(): loop = torch.stack([m(normalize(x)) for m in loop_modules(w)], 1)
    torch.testing.assert_close(b16.score(x), loop, atol=1e-5, rtol=1e-5)

def test_bank_storage_bad_input_and_pack_loading(tmp_path):
    with pytest.raises(ValueError, match="storage 'fp8'"): LensBank("m", 16, storage="fp8")
    w = random_lens_tensors(4, 16, seed=3); x = normalize(torch.randn(5, 16))
    exact = {k: v.bfloat16().float() for k, v in w.items()}
    torch.testing.assert_close(score_stacked(x, {k: v.bfloat16() for k, v in w.items()}, block=3), score_stacked(x, exact), atol=1e-6, rtol=0)

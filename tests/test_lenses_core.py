"Concept lenses without the real model: capture, classifiers, concept pack hygiene, bank, manager tiers, steering, divergence grading."
import json, re
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import CorruptFileError
from hsa_lib.models import tiny_model
from hsa_lib.lenses.capture import (LensCompatibilityError, LensSpec, capture, check_compatible, decoder_layers, pool, prefix_pool,
                                    resolve_layer, run_captured)
from hsa_lib.lenses.classifiers import MLPClassifier, LinearProbe, MeanDiffProbe, normalize
from hsa_lib.lenses.concepts import UnknownConceptError, check_leakage, load_concept_pack, load_default_pack, save_concept_pack
from hsa_lib.lenses.bank import KEYS, LensBank, load_lens_pack, loop_modules, random_lens_tensors, save_lens_pack, score_stacked
from hsa_lib.lenses.training import Lens, TrainConfig, auroc, f1_score, train_classifier
from hsa_lib.lenses.steering import SteeringError, remove_direction, steer, unit_vector
from hsa_lib.lenses.bench import bank_vs_loop, spearman

@pytest.fixture(scope="module")
def pack(): return load_default_pack()

# ---------- the concept pack: size, hierarchy, disjoint templates ----------
def test_pack_shape(pack):
    assert len(pack) >= 40 and pack.n_levels >= 3
    for c, meta in pack.concepts.items(): assert meta["definition"].strip(), c

def _template_re(t):
    return re.compile("^" + re.escape(t).replace(re.escape("{x}"), ".+") + "$")

def test_train_and_test_templates_are_disjoint(pack):
    "No test prompt shares a template or a 24-character substring with any training prompt of its concept."
    for c, p in pack.prompts.items():
        assert not set(p["templates_train"]) & set(p["templates_test"]), c
        train = p["positives_train"] + p["negatives_train"]; test = p["positives_test"] + p["negatives_test"]
        assert not set(train) & set(test), c
        assert check_leakage(train, test, p["templates_train"], p["templates_test"], k=24) == [], c
        tr_res = [_template_re(t) for t in p["templates_train"]]
        assert not [s for s in test if any(r.match(s) for r in tr_res)], c   # no test prompt fits a training template

def test_leakage_check_catches_leaks():
    train = ["The cat sat on the mat by the old door."]
    assert check_leakage(train, ["Yesterday the cat sat on the mat by the old door!"], k=24)
    assert check_leakage(train, ["x"], ["T {x}"], ["T {x}"])
    assert check_leakage(train, ["A completely different sentence here."], k=24) == []

def test_pack_roundtrip_and_corruption(pack, tmp_path):
    d = save_concept_pack(pack, tmp_path/"p"); back = load_concept_pack(d)
    assert back.concepts == pack.concepts and back.hierarchy == pack.hierarchy
    (d/"evil.pkl").write_bytes(b"x")
    with pytest.raises(CorruptFileError, match="evil.pkl"): load_concept_pack(d)

def test_unknown_concept(pack):
    with pytest.raises(UnknownConceptError, match="Unicorn"): pack.split("Unicorn")
    with pytest.raises(UnknownConceptError, match="Unicorn"): pack.children("Unicorn")

# ---------- capture ----------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_layouts_negative_index_and_cleanup(arch):
    m = tiny_model(arch).eval(); n = len(decoder_layers(m)); ids = torch.tensor([[1, 2, 3, 4]])
    hs = run_captured(m, [0, -1], stop_after=False, input_ids=ids)
    assert sorted(hs) == [0, n - 1] and hs[n - 1].shape == (1, 4, m.config.hidden_size)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(m, [-1]):
            raise RuntimeError("boom")
    assert all(len(b._forward_hooks) == 0 for b in decoder_layers(m))
    with pytest.raises(IndexError, match="out of range"): resolve_layer(m, n)

def test_pooling():
    h = torch.randn(2, 5, 8); mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(pool(h, mask, "last")[0], h[0, 2]); torch.testing.assert_close(pool(h, mask, "mean")[0], h[0, :3].mean(0))
    torch.testing.assert_close(pool(h, None, "mean_generated", prompt_len=3), h[:, 3:].mean(1))
    with pytest.raises(ValueError, match="unknown pooling"): pool(h, pooling="max")
    torch.testing.assert_close(prefix_pool(h[1])[-1], h[1].mean(0))

# ---------- lens compatibility (bad input) ----------
def _lens(d=16, layer=3, model_id="m"):
    clf = MLPClassifier(d).eval(); return Lens("Dog", {layer: LensSpec(model_id, d, layer, "mean")}, {layer: clf}, {layer: {"val_f1": 1.0, "threshold": 0.0}})

def test_lens_refuses_other_model_size_layer_pooling():
    lens = _lens(); x = torch.randn(4, 16)
    assert lens.logits(x, LensSpec("m", 16, 3, "mean")).shape == (4,)
    with pytest.raises(LensCompatibilityError, match="model_id"): lens.logits(x, LensSpec("other", 16, 3, "mean"))
    with pytest.raises(LensCompatibilityError, match="hidden_size"): lens.logits(torch.randn(4, 32), LensSpec("m", 32, 3, "mean"))
    with pytest.raises(LensCompatibilityError, match="layer 5"): lens.logits(x, LensSpec("m", 16, 5, "mean"))
    with pytest.raises(LensCompatibilityError, match="pooling"): lens.logits(x, LensSpec("m", 16, 3, "last"))
    with pytest.raises(ValueError, match="NaN"): lens.logits(torch.full((2, 16), float("nan")), LensSpec("m", 16, 3, "mean"))
    with pytest.raises(LensCompatibilityError, match="size 20"): lens.logits(torch.randn(4, 20), LensSpec("m", 16, 3, "mean"))

def test_classifier_shapes_and_nan_training():
    with pytest.raises(ValueError, match="size 8"): MLPClassifier(8)(torch.randn(3, 9))
    with pytest.raises(ValueError, match="size 8"): LinearProbe(8)(torch.randn(3, 9))
    x = torch.randn(40, 8); x[3, 2] = float("nan"); y = torch.arange(40) % 2
    with pytest.raises(ValueError, match="NaN"): train_classifier(x, y)
    with pytest.raises(ValueError, match="both"): MeanDiffProbe(8).fit(torch.randn(5, 8), torch.ones(5))

def test_training_separable_and_hard_cap():
    g = torch.Generator().manual_seed(0); y = (torch.arange(120) % 3 == 0).long()
    x = torch.randn(120, 32, generator=g) + 3 * y[:, None] * torch.randn(32, generator=g)
    clf, m = train_classifier(x, y, TrainConfig(max_epochs=80))
    assert m["val_f1"] > 0.8 and m["rounds"] <= 3
    _, m2 = train_classifier(torch.randn(120, 32, generator=g), torch.randint(0, 2, (120,), generator=g), TrainConfig(max_epochs=20, graduate_f1=1.01))
    assert m2["rounds"] <= len(TrainConfig().sample_schedule)   # unlearnable labels: stops at the cap

@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=30), st.integers(0, 2**16))
def test_metric_ranges(scores, seed):
    y = torch.tensor([i % 2 for i in range(len(scores))]); s = torch.tensor(scores)
    assert 0 <= auroc(s, y) <= 1 and 0 <= f1_score(s, y) <= 1
    torch.testing.assert_close(torch.tensor(auroc(-s, y)), torch.tensor(1 - auroc(s, y)), atol=1e-6, rtol=0)

# ---------- the bank ----------
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.integers(0, 1000))
def test_bank_equals_loop_for_any_token_count(n, t, seed):
    tens = random_lens_tensors(n, 24, hidden=(16, 8), seed=seed); x = torch.randn(t, 24)
    bank = LensBank("m", 24).add([f"c{i}" for i in range(n)], 0, tens)
    with torch.no_grad(): loop = torch.stack([m(normalize(x)) for m in loop_modules(tens)], 1)
    torch.testing.assert_close(bank.score(x), loop, atol=1e-5, rtol=1e-5)

def test_bank_add_remove_and_bad_input():
    a, b = random_lens_tensors(3, 16, seed=1), random_lens_tensors(2, 16, seed=2); x = torch.randn(5, 16)
    bank = LensBank("m", 16).add(["A", "B", "C"], 4, a); before = bank.score(x)
    bank.add(["D", "E"], 4, b); assert bank.names == ["A", "B", "C", "D", "E"]
    torch.testing.assert_close(bank.score(x)[:, :3], before)
    bank.remove(["B"]); torch.testing.assert_close(bank.score(x)[:, :2], before[:, [0, 2]])
    with pytest.raises(UnknownConceptError, match="Zebra"): bank.remove(["Zebra"])
    with pytest.raises(ValueError, match="already"): bank.add(["A"], 4, random_lens_tensors(1, 16))
    with pytest.raises(LensCompatibilityError, match="shape"): bank.score(torch.randn(5, 17))
    with pytest.raises(LensCompatibilityError, match="shape"): bank.score(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="NaN"): bank.score(torch.full((2, 16), float("nan")))
    with pytest.raises(LensCompatibilityError, match="W1"): bank.add(["F"], 4, random_lens_tensors(1, 20))
    with pytest.raises(LensCompatibilityError, match="model_id"): bank.score(x, LensSpec("other", 16, 4, "mean"))
    with pytest.raises(LensCompatibilityError, match="layer"): bank.score(x, LensSpec("m", 16, 7, "mean"))

def test_lens_pack_roundtrip_and_corruption(tmp_path):
    lenses = {c: _lens(layer=2) for c in ("Dog", "Cat")}
    d = save_lens_pack(lenses, tmp_path/"lp", "demo", "1.0.0", dtype="fp32"); bank = load_lens_pack(d)
    x = torch.randn(3, 16); want = torch.stack([lenses[c].logits(x, lenses[c].spec) for c in bank.names], 1)
    torch.testing.assert_close(bank.score(x, LensSpec("m", 16, 2, "mean")), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(UnknownConceptError, match="Wolf"): load_lens_pack(d, concepts=["Wolf"])
    (d/"layer_2.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError): load_lens_pack(d)

def test_bench_helpers():
    r = bank_vs_loop(n=8, d=32, tokens=(1, 3), repeats=1)
    assert all(v["max_abs_diff"] < 1e-5 and v["topk_agree"] for v in r.values())
    assert spearman([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    with pytest.raises(ValueError): spearman([1, 2], [1])

# ---------- steering on tiny models ----------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_steer_zero_and_exit_bit_identical(arch):
    m = tiny_model(arch).eval(); ids = torch.tensor([[3, 1, 4, 1, 5, 9]]); v = torch.randn(m.config.hidden_size)
    with torch.no_grad():
        base = m(input_ids=ids).logits
        with steer(m, v, -1, 0.0): zero = m(input_ids=ids).logits
        with steer(m, v, 0, 0.3, positions=[2, 3]): s = m(input_ids=ids).logits
        after = m(input_ids=ids).logits
    assert torch.equal(base, zero) and torch.equal(base, after)
    assert torch.equal(s[0, :2], base[0, :2]) and not torch.equal(s[0, 2:], base[0, 2:])   # causal: earlier positions untouched

def test_steer_bad_input():
    m = tiny_model("llama").eval(); d = m.config.hidden_size
    for bad, msg in [(torch.randn(d + 3), "hidden size"), (torch.zeros(d), "zeros"), (torch.full((d,), float("nan")), "NaN"), (torch.randn(2, d), "shape")]:
        with pytest.raises(SteeringError, match=msg):
            with steer(m, bad, 0, 0.1): pass
    with pytest.raises(SteeringError, match="mode"):
        with steer(m, torch.randn(d), 0, 0.1, mode="twist"): pass
    with pytest.raises(SteeringError, match="non-negative"):
        with steer(m, torch.randn(d), 0, 0.1, positions=[-1]): pass
    with pytest.raises(IndexError):
        with steer(m, torch.randn(d), 50, 0.1): pass
    assert all(len(b._forward_hooks) == 0 for b in decoder_layers(m))

@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_remove_direction_is_a_projection(seed):
    g = torch.Generator().manual_seed(seed); h = torch.randn(2, 3, 12, generator=g); v = unit_vector(torch.randn(12, generator=g), 12)
    r = remove_direction(h, v)
    torch.testing.assert_close(r @ v, torch.zeros(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(remove_direction(r, v), r, atol=1e-5, rtol=1e-5)   # idempotent

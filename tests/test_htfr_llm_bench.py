"HTFR LLM contexts (tiny teacher), distillation, and the benchmark functions at tiny sizes."
import math
import pytest, torch
from hsa_lib.models import tiny_model
from hsa_lib.htfr.llm import ContextConfig, context_shards, truncated_vocab, truncated_ppl, bigram_logits, distill, student_logits, raw_contexts
from hsa_lib.bench import Report, discover_benchmarks
from hsa_lib.htfr import bench as hb

def test_context_shards_cache_and_distill(tmp_path):
    torch.manual_seed(0); teacher = tiny_model("llama", vocab_size=300).eval()
    ids = torch.randint(0, 300, (700,)) // 3 * 3; test_ids = torch.randint(0, 300, (200,)) // 3 * 3
    cfg = ContextConfig(window=3, layers=(0, 2), n_buckets=256, countsketch=512, d_out=64, vocab=20, chunk=128)
    vocab = truncated_vocab(ids[1:], cfg.vocab)
    tr = context_shards(teacher, ids, cfg, vocab, "tiny", root=tmp_path, shard_rows=256)
    assert tr["features"].shape == (699, 64) and tr["features"].dtype == torch.float16 and tr["teacher"].shape == (699, 20)
    assert len(list(tmp_path.rglob("shard_*.safetensors"))) == 3
    again = context_shards(teacher, ids, cfg, vocab, "tiny", root=tmp_path)
    assert torch.equal(again["features"], tr["features"])
    te = context_shards(teacher, test_ids, cfg, vocab, "tiny", root=tmp_path)
    stu, h = distill(tr, n_tensors=32, k=4, steps=40, batch=64)
    assert sum(h["loss"][-5:]) < sum(h["loss"][:5])
    assert math.isfinite(truncated_ppl(student_logits(stu, te["features"]), te["next"], vocab))
    assert truncated_ppl(bigram_logits(ids, test_ids[:-1], vocab), te["next"], vocab) < 2 * cfg.vocab

def test_chunked_teacher_pass_first_chunk_matches_one_pass(tmp_path):
    torch.manual_seed(0); teacher = tiny_model("llama", vocab_size=100).eval(); ids = torch.randint(0, 100, (90,))
    cfg = ContextConfig(window=2, layers=(1,), n_buckets=64, countsketch=256, d_out=32, vocab=10, chunk=30)
    v = truncated_vocab(ids[1:], 10)
    a = context_shards(teacher, ids, cfg, v, "t", root=tmp_path/"a")
    b = context_shards(teacher, ids, ContextConfig(**{**cfg.to_dict(), "chunk": 200}), v, "t", root=tmp_path/"b")
    torch.testing.assert_close(a["teacher"][:30].float(), b["teacher"][:30].float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(a["features"][:30].float(), b["features"][:30].float(), atol=2e-2, rtol=2e-2)
    assert a["next"].tolist() == ids[1:].tolist() and len(a["features"]) == 89

def test_uniform_ppl_is_vocab_size_and_bad_vocab():
    v = torch.arange(7); assert abs(truncated_ppl(torch.zeros(5, 7), torch.tensor([0, 1, 2, 3, 4]), v) - 7) < 1e-6
    with pytest.raises(ValueError): truncated_ppl(torch.zeros(2, 7), torch.tensor([50, 60]), v)
    with pytest.raises(ValueError, match="exceeds"): truncated_vocab(torch.tensor([1, 1, 2]), 5)

def test_bench_registered_and_figure_names():
    assert "htfr" in discover_benchmarks()
    rep = Report("htfr", True)
    hb.srht_figures(rep, d=1024, m=64, batches=(1, 32, 256), repeats=1); hb.countsketch_figures(rep, d=1024, m=64, seeds=20)
    hb.topk_figures(rep, n=512, d=64, repeats=1); hb.ann_figures(rep, n=2048, d=64, batch=4, repeats=1)
    hb.quality_figures(rep, n=300, steps=20, n_tensors=16)
    assert set(rep.figures) == {"srht_speedup_b1", "srht_speedup_b32", "srht_speedup_b256", "srht_norm_ratio_mean", "srht_norm_ratio_std",
                                "countsketch_ip_bias", "topk_ms_b1", "topk_ms_per_sample_b32", "ann_recall_at_k", "ann_speedup",
                                "mse_over_var_friedman1", "mse_over_var_smooth8d"}
    assert all(math.isfinite(f.value) for f in rep.figures.values())

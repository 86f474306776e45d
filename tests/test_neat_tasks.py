"NEAT synthetic tasks: correctness over thousands of samples, disjoint levels, distinct counts, bad levels."
import random
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import ConfigError
from hsa_lib.neat.baseline import IGNORE
from hsa_lib.neat.tasks import (BABI_LEVELS, MATH_LEVELS, MATH_VOCAB, PASSKEY_LEVELS, MQARSpec, babi, encode_examples, math_dataset, mqar_batch, passkey, seq_task, word_vocab)

@pytest.mark.parametrize("level", sorted(MATH_LEVELS))
def test_math_levels_correct_in_range_and_diverse(level):
    ex = math_dataset(3000, levels=(level,), seed=level); lo, hi, steps = MATH_LEVELS[level]
    for e in ex:
        nums = [int(x) for x in e.prompt[:-1].replace("-", "+").split("+")]
        assert len(nums) == steps + 1 and all(lo <= x <= hi for x in nums)
        assert eval(e.prompt[:-1]) == int(e.answer)
    distinct = len({e.prompt for e in ex})
    assert distinct >= (150 if level == 0 else 2900), distinct  # level 0 has 200 possible problems

def test_math_level_ranges_are_disjoint():
    r = sorted((lo, hi) for lo, hi, _ in MATH_LEVELS.values())
    assert all(a[1] < b[0] for a, b in zip(r, r[1:]))

@pytest.mark.parametrize("fn", [lambda: math_dataset(2, levels=(9,)), lambda: passkey(max(PASSKEY_LEVELS) + 1, random.Random(0)),
                                lambda: babi("qa1", -1, random.Random(0)), lambda: babi("qa9", 0, random.Random(0)), lambda: seq_task("fly", random.Random(0))])
def test_bad_levels_and_names_raise(fn):
    with pytest.raises(ConfigError): fn()

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_pairs=st.integers(1, 8), gap=st.integers(0, 40))
def test_mqar_queries_are_answerable_and_far(seed, n_pairs, gap):
    spec = MQARSpec(seq_len=96, n_pairs=n_pairs, n_queries=n_pairs, n_keys=8, n_values=8, min_gap=gap)
    ids, tgt, dist = mqar_batch(spec, 4, torch.Generator().manual_seed(seed))
    q = tgt != IGNORE
    assert q.sum() == 4 * n_pairs and (dist[q] >= gap).all()
    for b, p in q.nonzero().tolist():  # the queried key appears earlier followed by its value
        k, v, d = ids[b, p].item(), tgt[b, p].item(), dist[b, p].item()
        assert ids[b, p - d] == k and ids[b, p - d + 1] == v

def test_mqar_impossible_shape():
    with pytest.raises(ConfigError, match="seq_len=16"): MQARSpec(seq_len=16, n_pairs=8)

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), level=st.sampled_from(sorted(BABI_LEVELS)), task=st.sampled_from(["qa1", "qa2"]))
def test_babi_answer_is_the_simulated_location(seed, level, task):
    e = babi(task, level, random.Random(seed)); story = e.prompt.split(" where is ")[0]
    subject = e.prompt.split(" where is ")[1].replace(" ?", "").replace("the ", "")
    assert e.answer in story and len(story.split(" . ")) >= BABI_LEVELS[level]
    if task == "qa1":  # the last sentence about the person names the answer
        last = [s for s in story.split(" .") if s.strip().startswith(subject) and "to the" in s][-1]
        assert last.strip().endswith(e.answer)

def test_passkey_and_encoding_roundtrip():
    exs = [passkey(1, random.Random(i)) for i in range(20)]
    V = word_vocab(exs); ids, tgt, pm, st_ = encode_examples(exs, V)
    for i, e in enumerate(exs):
        assert V.decode(tgt[i][tgt[i] != IGNORE].tolist()) == e.answer
    with pytest.raises(ConfigError, match="max_len"): encode_examples(exs, V, max_len=5)

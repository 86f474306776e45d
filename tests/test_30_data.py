"What hsa_lib.data must survive: offline Hub ids, missing and corrupt local files; and what its splits promise."
import json
import pytest
from hypothesis import given, settings, strategies as st
from hsa_lib.core import CorruptFileError
from hsa_lib.data import (DatasetUnavailableError, corpus_splits, load_corpus, load_text_dataset, load_tokenizer,
                          split_by_hash, split_of)

def test_unknown_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match=r"'no-such-org/no-such-dataset' is not a local file and the Hub is offline"):
        load_text_dataset("no-such-org/no-such-dataset")

def test_unknown_tokenizer_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match="tokenizer 'no-such/tokenizer'.*Hub is offline"): load_tokenizer("no-such/tokenizer")

def test_missing_and_corrupt_local_files(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="no such file"): load_text_dataset(str(tmp_path/"nope.jsonl"))
    (tmp_path/"bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(CorruptFileError, match="bad.jsonl could not be read as json"): load_text_dataset(str(tmp_path/"bad.jsonl"))
    (tmp_path/"mixed").mkdir(); (tmp_path/"mixed"/"a.txt").write_text("x"); (tmp_path/"mixed"/"b.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="one format"): load_text_dataset(str(tmp_path/"mixed"))

def test_local_parquet_with_the_cosmopedia_schema(tmp_path):
    "A local parquet with cosmopedia-v2's columns loads like the Hub dataset would."
    import datasets
    cols = {"prompt": ["p1", "p2"], "text": ["t1", "t2"], "token_length": [3, 4], "audience": ["a", "b"], "format": ["f", "g"], "seed_data": ["s", "s"]}
    datasets.Dataset.from_dict(cols).to_parquet(str(tmp_path/"cosmo.parquet"))
    ds = load_text_dataset(str(tmp_path/"cosmo.parquet"))
    assert ds.column_names == list(cols) and ds["text"] == ["t1", "t2"]

def test_corpus_is_substantial_and_split_without_leaks():
    docs = load_corpus()
    assert sum(len(d.text) for d in docs) > 300_000 and len(docs) >= 200
    assert len({d.key for d in docs}) == len(docs)
    sp = corpus_splits()
    keys = {s: {d.key for d in v} for s, v in sp.items()}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert len(keys["val"]) > 0 and len(keys["test"]) > 0

@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=50), a=st.floats(0, 1), b=st.floats(0, 1))
def test_split_of_is_deterministic_and_respects_empty_shares(key, a, b):
    fr = (a * (1 - b), (1 - a) * (1 - b), b); s = sum(fr); fr = tuple(x / s for x in fr) if s > 0 else (1.0, 0.0, 0.0)
    got = split_of(key, fr)
    assert got == split_of(key, fr)
    assert fr[("train", "val", "test").index(got)] > 0

def test_split_shares_match_fractions():
    sp = split_by_hash(range(20000), key=str, fractions=(0.8, 0.1, 0.1))
    assert abs(len(sp["train"]) / 20000 - 0.8) < 0.02 and abs(len(sp["test"]) / 20000 - 0.1) < 0.01

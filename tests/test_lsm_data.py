"LSM conversation data: annotation round trip, bad input, the shipped dataset, leak-free splits, the cosmopedia loader."
import json
import pytest
from hypothesis import given, settings, strategies as st
from hsa_lib.lsm.reservoir import LSMError
from hsa_lib.lsm.system import MARKER_RE
from hsa_lib.lsm.data import (MessageAnnotator, make_conversations, load_conversations, CONVERSATIONS_PATH, conversation_key,
                              split_conversations, load_cosmopedia, write_cosmopedia_sample, cosmopedia_conversation, COSMOPEDIA_COLUMNS)

content = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(lambda s: not MARKER_RE.search(s))
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": content})

@settings(max_examples=25, deadline=None)
@given(system=st.one_of(st.none(), content), msgs=st.lists(message, min_size=1, max_size=5))
def test_annotation_round_trip(system, msgs):
    conv = ([{"role": "system", "content": system}] if system is not None else []) + msgs
    ann = MessageAnnotator(); assert ann.parse(ann.annotate(conv)) == conv

@pytest.mark.parametrize("text,match", [
    ("|start|\n|user|hi\n|robot|x\n|end|", "unknown annotation marker '|robot|'"),
    ("|start|\n|end|", "empty conversation"),
    ("|user|hi\n|end|", "must be"),
    ("|start|\n|user|hi\n", "must be"),
    ("|start|\n|user|hi\n|start|\n|end|", "misplaced"),
])
def test_bad_annotations(text, match):
    with pytest.raises(LSMError, match=match.replace("|", r"\|")): MessageAnnotator().parse(text)

def test_bad_conversations():
    ann = MessageAnnotator()
    with pytest.raises(LSMError, match="non-empty"): ann.annotate([])
    with pytest.raises(LSMError, match="role"): ann.annotate([{"role": "bot", "content": "x"}])
    with pytest.raises(LSMError, match="only come first"): ann.annotate([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(LSMError, match="marker-like"): ann.annotate([{"role": "user", "content": "a |foo| b"}])

def test_shipped_dataset():
    assert CONVERSATIONS_PATH.stat().st_size < 500_000
    convs = load_conversations()
    assert convs == make_conversations(400)
    assert all(c["messages"][0]["role"] == "system" and len(c["messages"]) >= 3 for c in convs)
    assert len({c["messages"][0]["content"] for c in convs}) == 4

def test_splits_never_leak(tmp_path):
    convs = make_conversations(200, seed=1)
    dupes = [{"id": f"dup-{i}", "messages": c["messages"]} for i, c in enumerate(convs[:50])]  # same content, new ids
    sp = split_conversations(convs + dupes)
    keys = {s: {conversation_key(c) for c in v} for s, v in sp.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert sum(map(len, sp.values())) == 250 and sp == split_conversations(convs + dupes)

def test_cosmopedia_local_parquet_and_missing_column(tmp_path):
    p = write_cosmopedia_sample(tmp_path / "c.parquet", n=6)
    ds = load_cosmopedia(str(p))
    assert set(ds.column_names) == set(COSMOPEDIA_COLUMNS) and len(ds) == 6
    MessageAnnotator().check(cosmopedia_conversation(ds[0])["messages"])
    for col in ("seed_data", "prompt"):
        ds.remove_columns(col).to_parquet(str(tmp_path / f"no_{col}.parquet"))
        with pytest.raises(LSMError, match=f"'{col}'"): load_cosmopedia(str(tmp_path / f"no_{col}.parquet"))
    j = write_cosmopedia_sample(tmp_path / "c.jsonl", n=3)
    assert len(load_cosmopedia(str(j))) == 3 and next(iter(load_cosmopedia(str(j), streaming=True)))["prompt"]

def test_cosmopedia_hub_offline_is_a_clear_error(monkeypatch):
    from hsa_lib.data import DatasetUnavailableError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match="offline"): load_cosmopedia()

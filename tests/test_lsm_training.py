"LSM training and inference: exact resume from safetensors checkpoints, real decoding, manager rule, orchestrator."
import json
import pytest, torch
from hsa_lib.core import CorruptFileError
from hsa_lib.lsm.reservoir import LSMError, ReservoirConfig
from hsa_lib.lsm.embedding import StandardTokenizerWrapper, Vocab, SinusoidalEmbedder, fit_embedder, smoothness_score
from hsa_lib.lsm.data import MessageAnnotator, load_conversations
from hsa_lib.lsm.training import LSMConfig, LSMModel, LSMTrainer, load_trainer, system_turns
from hsa_lib.lsm.inference import ResponseGenerator, ReservoirManager, PipelineOrchestrator, colab_setup

@pytest.fixture(scope="module")
def setup():
    tok = StandardTokenizerWrapper(); ann = MessageAnnotator()
    ids = tok.encode("\n".join(ann.annotate(c["messages"]) for c in load_conversations()[:80]))
    voc = Vocab(ids); return tok, voc, voc.encode(ids)

def small(voc, **kw): return LSMTrainer(LSMModel(LSMConfig(vocab_size=len(voc), units=40, embed_dim=8, window=3, channels=4, **kw)), batch_size=16)

def test_tokenizer_round_trip(setup):
    tok, voc, stream = setup
    text = "|start|\n|user|What is 3 plus 4?\n|end|"
    assert tok.decode(tok.encode(text)) == text and tok.vocab_size == 49152
    assert voc.decode(voc.encode(tok.encode(text))) == tok.encode(text)
    with pytest.raises(LSMError, match="str"): tok.encode(None)

def test_embedder_fit_raises_smoothness(setup):
    _, voc, stream = setup
    emb = SinusoidalEmbedder(len(voc), 8, seed=0); before = smoothness_score(emb.weight.detach(), stream)
    hist = fit_embedder(emb, stream, steps=60)
    assert smoothness_score(emb.weight.detach(), stream) > before and hist[-1] < hist[0]
    with pytest.raises(LSMError, match="integer"): emb(torch.tensor([0.5]))

def test_resume_is_exact(setup, tmp_path):
    _, voc, stream = setup
    a = small(voc); a.fit_tokens(stream, steps=12)
    b = small(voc); b.fit_tokens(stream, steps=5); b.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "trainer.json").read_text()); assert meta["step"] == 5 and len(meta["history"]) == 5
    c = load_trainer(tmp_path / "ck"); c.fit_tokens(stream, steps=7)
    assert c.step == 12 and [h["loss"] for h in c.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-5)
    for p, q in zip(a.model.state_dict().values(), c.model.state_dict().values()): assert torch.allclose(p, q, atol=1e-6)

def test_corrupt_checkpoint(setup, tmp_path):
    _, voc, stream = setup
    t = small(voc); t.fit_tokens(stream, steps=2); t.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="unreadable"): load_trainer(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="model.safetensors"): load_trainer(tmp_path)

def test_bad_ids(setup):
    _, voc, _ = setup
    m = small(voc).model
    with pytest.raises(LSMError, match="integer"): m.states(torch.zeros(1, 3))
    with pytest.raises(LSMError, match=r"\[0, "): m.states(torch.tensor([[len(voc)]]))

def test_generation_is_real_decoding(setup):
    tok, voc, stream = setup
    t = small(voc, leak_rate=0.7); t.fit_tokens(stream, steps=60)
    gen = ResponseGenerator(t.model, tok, voc); msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 plus 2?"}]
    outs = {gen.generate(msgs, seed=s, max_new_tokens=12, stop="") for s in range(6)}
    assert len(outs) > 1  # sampling: different seeds, different text
    assert gen.generate(msgs, temperature=0, max_new_tokens=8) == gen.generate(msgs, temperature=0, max_new_tokens=8, seed=9)
    assert all(isinstance(o, str) and o for o in outs)
    with pytest.raises(LSMError, match="top_k"): gen.generate(msgs, top_k=0)

def test_response_level_loop(setup):
    tok, voc, stream = setup
    t = small(voc); enc = lambda s: voc.encode(tok.encode(s))
    pairs = [(enc(c["messages"][1]["content"]), enc(c["messages"][2]["content"])) for c in load_conversations()[:30]]
    _, losses = t.fit_responses(pairs, steps=40)
    assert losses[-1] < losses[0]
    with pytest.raises(LSMError, match="at least one"): t.fit_responses([])

def test_manager_rule_and_orchestrator(setup):
    _, voc, stream = setup
    mgr = ReservoirManager(ReservoirConfig(input_dim=3, units=10), separate=["system"])
    assert mgr.get("user") is mgr.get("assistant") and mgr.get("system") is not mgr.get("user")
    orch = PipelineOrchestrator(LSMConfig(vocab_size=len(voc), units=30, embed_dim=8, window=2, channels=4), steps=5, batch_size=8)
    assert orch.build(readout="linear").config.readout == "linear"
    with pytest.raises(LSMError, match="colour"): orch.build(colour=1)
    with pytest.raises(LSMError, match="rnn"): orch.build(readout="rnn")
    r = orch.run(stream[:1500], stream[1500:2500], recurrence=False)
    assert 0 <= r["eval_top10"] <= 1 and r["eval_tokens"] > 0
    assert colab_setup()["colab"] is False

def test_softmax_head_trains_resumes_and_rejects_unknown(setup, tmp_path):
    _, voc, stream = setup
    a = small(voc, head="softmax"); a.fit_tokens(stream, steps=1); before = a.evaluate(stream)["eval_ce"]
    a.fit_tokens(stream, steps=40)
    assert a.model.head.weight.shape == (len(voc), 8) and a.model.head.weight.requires_grad
    assert a.evaluate(stream)["eval_ce"] < before
    a.save(tmp_path / "ck"); b = load_trainer(tmp_path / "ck")
    assert b.model.config.head == "softmax" and torch.equal(b.topk_hits(stream[:400]), a.topk_hits(stream[:400]))
    with pytest.raises(LSMError, match="tied"): LSMModel(LSMConfig(vocab_size=len(voc), head="tied"))

def test_fitted_input_embedding_via_config(setup, tmp_path):
    _, voc, stream = setup
    assert LSMConfig().fit_embedding_steps == 0  # default unchanged: the unfitted table
    plain, fitted = small(voc), small(voc, fit_embedding_steps=40)
    before = smoothness_score(fitted.model.embedder.weight.detach(), stream)
    fitted.fit_tokens(stream, steps=3); plain.fit_tokens(stream, steps=3)
    theta = fitted.model.embedder.theta
    assert smoothness_score(fitted.model.embedder.weight.detach(), stream) > before and not theta.requires_grad
    assert not any(p is theta for p in fitted.params)
    assert torch.equal(plain.model.embedder.theta, small(voc).model.embedder.theta)  # fit_embedding_steps=0 leaves it alone
    fitted.save(tmp_path / "ck"); r = load_trainer(tmp_path / "ck")
    assert r.model.config.fit_embedding_steps == 40 and torch.equal(r.model.embedder.theta, theta)
    r.fit_tokens(stream, steps=2); assert torch.equal(r.model.embedder.theta, theta)  # a resumed run does not refit

@pytest.fixture(scope="module")
def sys_setup(setup):
    tok, _, _ = setup; convs = load_conversations()
    cvoc = Vocab(tok.encode("\n".join(MessageAnnotator().annotate(c["messages"]) for c in convs)))
    mk = lambda: LSMTrainer(LSMModel(LSMConfig(vocab_size=len(cvoc), units=40, embed_dim=12, window=3, channels=6)), batch_size=32)
    turns = system_turns(convs[:36]); return mk, mk().system_data(turns, tok, cvoc), turns

def test_system_readout_trains_and_system_prompt_steers(sys_setup):
    mk, data, turns = sys_setup; imgs, S, Y = data
    assert len(turns) > 36 and imgs.shape[0] == S.shape[0] == Y.shape[0] == len(turns)
    wrong = (imgs, S[torch.randperm(len(S), generator=torch.Generator().manual_seed(1))], Y)
    t = mk(); t.fit_system(data, steps=0)
    assert t.system_loss(data) == pytest.approx(t.system_loss(wrong), abs=1e-6)  # identity modifiers at init
    h = t.fit_system(data, steps=80)
    first, last = sum(r["loss"] for r in h[:5]) / 5, sum(r["loss"] for r in h[-5:]) / 5
    assert last < first and t.system_step == 80
    assert t.system_loss(data) < t.system_loss(wrong)  # the right system prompt explains the response better
    i = next(k for k, (s, _, _) in enumerate(turns) if s != turns[0][0])  # two examples with different system prompts
    with torch.no_grad(): a, b = (t.system_readout(imgs[:1], S[j:j + 1]) for j in (0, i))
    assert not torch.allclose(a, b, atol=1e-4)  # same input, different system prompt → different output

def test_system_readout_resume_is_exact_and_bad_input(sys_setup, tmp_path):
    mk, data, _ = sys_setup
    a = mk(); a.fit_system(data, steps=12)
    b = mk(); b.fit_system(data, steps=6, checkpoint_dir=tmp_path / "ck", checkpoint_every=3)
    assert json.loads((tmp_path / "ck" / "system.json").read_text())["step"] == 6
    c = load_trainer(tmp_path / "ck"); assert c.system_step == 6; c.fit_system(data, steps=6)
    assert [h["loss"] for h in c.system_history] == pytest.approx([h["loss"] for h in a.system_history], rel=1e-5)
    for p, q in zip(a.system_readout.parameters(), c.system_readout.parameters()): assert torch.allclose(p, q, atol=1e-6)
    with pytest.raises(LSMError, match="no system prompt"): system_turns([{"id": "x", "messages": [{"role": "user", "content": "hi"}]}])
    (tmp_path / "ck" / "system.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="system.safetensors"): load_trainer(tmp_path / "ck")

def test_esn_readout_sees_state_and_input_and_decodes(setup):
    tok, voc, stream = setup
    t = LSMTrainer(LSMModel(LSMConfig(vocab_size=len(voc), units=40, embed_dim=8, window=1, readout="linear", include_input=True, head="softmax")), batch_size=16)
    ids = stream[:30][None]; st = t.model.states(ids)
    assert st.shape == (1, 30, 48) and torch.equal(st[..., 40:], t.model.embedder(ids))  # [x(t); u(t)]
    assert torch.equal(st[..., :40], t.model.reservoir(t.model.embedder(ids)))
    t.fit_tokens(stream, 3)
    out = ResponseGenerator(t.model, tok, voc).generate("What is 2 plus 2?", max_new_tokens=4, seed=0)  # the carried state is the reservoir part
    assert isinstance(out, str)
    ctrl = LSMModel(LSMConfig(vocab_size=len(voc), units=40, embed_dim=8, window=1, readout="linear", include_input=True, use_reservoir=False))
    assert ctrl.states(ids).shape == (1, 30, 8)  # no reservoir: the input alone

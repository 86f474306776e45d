"MVoT: task generators, the learned codebook, interleaved encoding, the token discrepancy loss, the visual-step gate."
import random
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.neat.mvot import (MVoTError, make_task, KINDS, WALL, GOAL, render, fit_codebook, encode_image, code_types, Vocab, encode_task,
                               discrepancy_matrix, discrepancy_loss, MVoTConfig, train_mvot, visual_accuracy, answer_accuracy, imagine,
                               fit_visual_gate, MODES)

@pytest.fixture(scope="module")
def cb(): return fit_codebook(8, n_boards=32)

@settings(max_examples=25, deadline=None)
@given(st.sampled_from(KINDS), st.integers(3, 8), st.integers(0, 10_000), st.integers(1, 6))
def test_task_invariants(kind, size, seed, n):
    t = make_task(kind, size, random.Random(seed), n_moves=n)
    assert len(t.moves) == len(t.positions) == n and t.start != t.goal
    assert all(0 <= r < size and 0 <= c < size for r, c in t.positions)
    if kind == "maze": assert all(t.grid[r][c] != WALL for r, c in t.positions) and t.answer != "hole"
    if t.answer == "goal": assert t.positions[-1] == t.goal
    if t.answer == "hole": assert t.grid[t.positions[-1][0]][t.positions[-1][1]] == WALL
    if t.answer == "none": assert t.goal not in t.positions

def test_bad_tasks():
    with pytest.raises(MVoTError, match="out of range"): make_task("maze", 2, random.Random(0))
    with pytest.raises(MVoTError, match="out of range"): make_task("maze", 9, random.Random(0))
    with pytest.raises(MVoTError, match="unknown task kind"): make_task("cliffwalk", 4, random.Random(0))
    assert issubclass(MVoTError, ValueError)

def test_codebook_round_trip(cb):
    g = torch.Generator().manual_seed(3)
    for i in range(10):
        t = make_task(KINDS[i % 2], 3 + i % 6, random.Random(i)); b = torch.tensor(t.board(t.start))
        assert torch.equal(code_types(cb)[encode_image(render(t.board(t.start), g=g), cb)], b)
    assert len(set(code_types(cb).tolist())) == 4                 # every cell type has a code

def test_codebook_mismatch(cb):
    t = make_task("maze", 4, random.Random(0))
    with pytest.raises(MVoTError, match="codebook has 6 codes"): encode_task(t, "mvot", cb[:6], Vocab(8))
    with pytest.raises(MVoTError, match="codebook entries"): encode_image(render(t.board(t.start), px=4), cb, px=4)
    with pytest.raises(MVoTError, match="unknown mode"): encode_task(t, "sketch", cb, Vocab(8))

def test_interleaving(cb):
    t = make_task("frozenlake", 5, random.Random(1)); v = Vocab(8)
    lens = {m: len(encode_task(t, m, cb, v)["ids"]) for m in MODES}
    assert lens == {"mvot": 2 + 25 + 1 + 3 + 3 * 27 + 2, "cot": 2 + 25 + 1 + 3 + 12 + 2, "direct": 2 + 25 + 1 + 3 + 2}
    e = encode_task(t, "mvot", cb, v); vis = e["ids"] < 8
    assert ((e["rc"][:, 0] >= 0) == vis).all()

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_ld_bounds(seed):
    g = torch.Generator().manual_seed(seed); cbk = torch.rand(8, 27, generator=g); S = discrepancy_matrix(cbk)
    lg = torch.randn(5, 40, generator=g, requires_grad=True); tg = torch.randint(0, 8, (5,), generator=g)
    L = discrepancy_loss(lg, tg, S); assert 0 <= L.item() <= 1
    L.backward(); assert lg.grad[:, :8].abs().sum() > 0 and lg.grad[:, 8:].abs().sum() == 0   # only image-token logits

def test_ld_zero_at_truth(cb):
    S = discrepancy_matrix(cb); lg = torch.full((8, 30), -30.0); lg[torch.arange(8), torch.arange(8)] = 30.0
    assert discrepancy_loss(lg, torch.arange(8), S).item() < 1e-6
    with pytest.raises(MVoTError, match="fewer than"): discrepancy_loss(torch.zeros(2, 4), torch.tensor([0, 1]), S)

def test_train_and_measure(cb):
    m = train_mvot(cb, "mvot", MVoTConfig(steps=6, batch=4, sizes=(3,)))
    assert m.losses[-1] < m.losses[0]
    ts = [make_task("maze", 3, random.Random(i)) for i in range(4)]
    assert 0 <= visual_accuracy(m, cb, ts) <= 1 and 0 <= answer_accuracy(m, cb, ts) <= 1
    assert imagine(m, cb, ts[0]).shape == (3, 3, 3)
    with pytest.raises(MVoTError, match="single grid size"): answer_accuracy(m, cb, ts + [make_task("maze", 4, random.Random(9))])

def test_gate_learns():
    big = [make_task("maze", 7, random.Random(i)) for i in range(8)]; small = [make_task("maze", 3, random.Random(i)) for i in range(8)]
    gate = fit_visual_gate(big + small, [1] * 8 + [0] * 8, [0] * 8 + [1] * 8)
    assert all(gate.use_visual(t) for t in big) and not any(gate.use_visual(t) for t in small)
    assert not fit_visual_gate(big, [1] * 8, [1] * 8).use_visual(big[0])      # ties only: nothing learned, default text

def test_src_links_previous_board(cb):
    "src points each position predicting a visual token at the same cell of the previous board, always earlier."
    t = make_task("maze", 4, random.Random(2)); e = encode_task(t, "mvot", cb, Vocab(8)); src, rc = e["src"], e["rc"]
    p = (src >= 0).nonzero().flatten()
    assert len(p) == 3 * 16 and (src[p] < p).all()
    assert torch.equal(rc[src[p]], rc[p + 1])
    assert (encode_task(t, "cot", cb, Vocab(8))["src"] == -1).all()

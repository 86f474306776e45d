"HSA views: snapshots replay a registry, projections give the right ellipses, figures and the explorer have the expected parts and stay small, bad input is refused by name."
import json, math, random
import pytest, torch
from hypothesis import given, settings, strategies as st
import plotly.graph_objects as go
from hsa_lib.hsa.splats import SplatConfig, SplatRegistry
from hsa_lib.hsa.attention import reference_attention
from hsa_lib.hsa.viz import (VizError, Projection, SplatExplorer, attention_maps, attention_maps_figure, ellipse_points, events_timeline,
                             project_2d, snapshot, snapshot_splats, splat_explorer, splat_figure, splat_steps_figure)

def _live(reg):
    "{(level, head): sorted live ids} straight from the registry's buffers."
    return {(l, h): sorted(reg.buf("ids", l)[h][reg.buf("alive", l)[h]].tolist()) for l in range(reg.n_levels) for h in range(reg.cfg.n_heads)}

def _snap_ids(snap):
    return {(l, h): sorted(hd["ids"]) for l, lev in enumerate(snap["levels"]) for h, hd in enumerate(lev["heads"])}

def _run(H=2, D=8, n=240, rounds=6, seed=0):
    "A small run with real registry operations: keys, snapshots after each round, events and history in the controller's format."
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(H, 4, D, generator=g)[:, torch.arange(n) % 4] * 3 + torch.randn(H, n, D, generator=g)
    reg = SplatRegistry(SplatConfig(n_heads=H, head_dim=D, level_sizes=(4, 2)), seed=seed)
    snaps, events, history = [snapshot(reg, 0)], [], [dict(step=0, counts=reg.counts().tolist())]
    for r in range(1, rounds + 1):
        step, h = 10 * r, r % H
        sid = reg.splats(level=0, head=h)[0].id
        if r % 3 == 1: events.append(dict(step=step, op="split", level=0, head=h, ids_in=[sid], ids_out=list(reg.split(sid, torch.randn(D, generator=g))), reason="test", metric=1.0))
        elif r % 3 == 2: events.append(dict(step=step, op="birth", level=0, head=h, ids_in=[], ids_out=[reg.register(0, h, keys[h, r], 0.0)], reason="test", metric=-3.0))
        else:
            a, b = [s.id for s in reg.splats(level=0, head=h)][:2]
            events.append(dict(step=step, op="merge", level=0, head=h, ids_in=[a, b], ids_out=[reg.merge(a, b)], reason="test", metric=0.1))
        snaps.append(snapshot(reg, step)); history.append(dict(step=step, counts=reg.counts().tolist()))
    return reg, keys, snaps, events, history

@pytest.fixture(scope="module")
def run(): return _run()

# --- snapshots

def test_snapshot_json_round_trip_counts_and_ids(run):
    reg, keys, snaps, events, history = run
    s = snaps[-1]
    assert json.loads(json.dumps(s)) == s
    assert s["counts"] == reg.counts().tolist()
    assert _snap_ids(s) == _live(reg)
    for l, lev in enumerate(s["levels"]):
        for h, hd in enumerate(lev["heads"]):
            assert len(hd["ids"]) == len(hd["mu"]) == len(hd["sigma"]) == len(hd["amplitude"]) == len(hd["parent"]) == s["counts"][l][h]
            assert all(len(m) == 8 for m in hd["mu"]) and all(x > 0 for sg in hd["sigma"] for x in sg)
    assert len(json.dumps(s)) < 20_000

@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.sampled_from(["split", "merge", "birth", "death"]), max_size=12), seed=st.integers(0, 1000), rank=st.sampled_from([0, 2]))
def test_snapshot_follows_any_op_sequence(ops, seed, rank):
    rng = random.Random(seed)
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=4, level_sizes=(3, 2), rank=rank), seed=seed)
    for op in ops:
        l, h = rng.randrange(2), rng.randrange(2); ids = [s.id for s in reg.splats(level=l, head=h)]
        if op == "split" and ids: reg.split(rng.choice(ids), torch.randn(4))
        elif op == "merge" and len(ids) >= 2: reg.merge(*rng.sample(ids, 2))
        elif op == "birth": reg.register(l, h, torch.randn(4), 0.1)
        elif op == "death" and len(ids) >= 2: reg.unregister(rng.choice(ids))
    s = json.loads(json.dumps(snapshot(reg, len(ops))))
    assert _snap_ids(s) == _live(reg) and s["counts"] == reg.counts().tolist()
    assert ("u" in s["levels"][0]["heads"][0]) == bool(rank)

def test_snapshot_splats_replays_attention():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=4, level_sizes=(3, 2), rank=1, local_window=3), seed=1)
    with torch.no_grad():
        for l in range(reg.n_levels): reg.log_amp[l].normal_(); reg.u[l].normal_(0, 0.3)
        reg.hierarchy.level_logits.normal_()
    reg.split(0, torch.ones(4))
    s = snapshot(reg, 5, digits=6)
    assert s["local_log_weight"] == pytest.approx(float(reg.hierarchy.log_weight("local").detach()), abs=1e-5)
    q, k, v = torch.randn(1, 2, 12, 4), torch.randn(1, 2, 12, 4), torch.randn(1, 2, 12, 3)
    with torch.no_grad(): a, b = reference_attention(q, k, v, reg.stacked(), True), reference_attention(q, k, v, snapshot_splats(s), True)
    assert torch.allclose(a, b, atol=1e-4)

def test_snapshot_bad_input():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(2,)))
    with pytest.raises(VizError, match="step must be a non-negative int"): snapshot(reg, 1.5)
    with pytest.raises(VizError, match="needs a SplatRegistry"): snapshot(reg.stacked(), 0)
    with pytest.raises(VizError, match="not a splat snapshot"): snapshot_splats({"levels": []})

# --- projection and ellipses

def test_known_covariance_gives_right_axes():
    P = torch.tensor([[1., 1, 0, 0], [1, -1, 0, 0]]) / math.sqrt(2)
    proj = Projection(torch.zeros(4), P)
    cov = proj.cov(torch.tensor([[3.0, 1.0, 7.0, 0.1]]))                     # σ² = 9, 1 on the plane's dims: Σ₂ = [[5, 4], [4, 5]]
    assert torch.allclose(cov[0], torch.tensor([[5.0, 4.0], [4.0, 5.0]]), atol=1e-5)
    poly = ellipse_points(torch.tensor([[1.0, -2.0]]), cov, n_pts=2001)[0] - torch.tensor([1.0, -2.0])
    r = poly.norm(dim=-1)
    assert r.max() == pytest.approx(3.0, abs=1e-3) and r.min() == pytest.approx(1.0, abs=1e-3)
    major = poly[r.argmax()] / r.max()
    assert abs(float(major @ torch.tensor([1.0, 1.0]) / math.sqrt(2))) == pytest.approx(1.0, abs=1e-3)   # along (1, 1)
    assert torch.allclose(ellipse_points(torch.zeros(1, 2), cov, n_std=2.0, n_pts=2001)[0].norm(dim=-1).max(), torch.tensor(6.0), atol=1e-3)
    u = torch.zeros(1, 4, 1); u[0, 2, 0] = 2.0                              # low rank along a dim the plane does not see: no change
    assert torch.allclose(proj.cov(torch.tensor([[3.0, 1.0, 7.0, 0.1]]), u), cov)
    u[0, 0, 0] = 2.0                                                        # along dim 0: Σ₂ gains (P u)(P u)ᵀ
    assert torch.allclose(proj.cov(torch.tensor([[3.0, 1.0, 7.0, 0.1]]), u)[0], cov[0] + 2 * torch.ones(2, 2) * torch.tensor([[1., 1], [1, 1]]), atol=1e-5)

@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 10), seed=st.integers(0, 10_000))
def test_ellipse_lies_on_its_contour(d, seed):
    g = torch.Generator().manual_seed(seed)
    proj = project_2d(torch.randn(50, d, generator=g) * torch.rand(d, generator=g).add(0.1))
    sigma = torch.rand(3, d, generator=g) + 0.05
    cov = proj.cov(sigma); c = torch.randn(3, 2, generator=g)
    x = ellipse_points(c, cov.double(), n_pts=16) - c.double()[:, None]
    m = torch.einsum("kpi,kij,kpj->kp", x, torch.linalg.inv(cov.double()), x)
    assert torch.allclose(m, torch.ones_like(m), atol=1e-6)
    lam = torch.linalg.eigvalsh(cov)                                        # interlacing: within [min σ², max σ²]
    assert (lam >= sigma.pow(2).min(1).values[:, None] - 1e-5).all() and (lam <= sigma.pow(2).max(1).values[:, None] + 1e-5).all()

def test_pca_finds_the_long_axis_and_axes_method():
    x = torch.randn(400, 5) * torch.tensor([0.1, 4.0, 0.2, 1.0, 0.1])
    p = project_2d(x)
    assert abs(float(p.P[0, 1])) > 0.99 and abs(float(p.P[1, 3])) > 0.98
    assert torch.allclose(p.P @ p.P.T, torch.eye(2), atol=1e-5) and p.explained[0] > 0.8
    a = project_2d(x, "axes")
    assert torch.equal(a(x), x[:, :2])

def test_projection_bad_input():
    with pytest.raises(VizError, match="keys must be"): project_2d(torch.randn(3, 4, 5))
    with pytest.raises(VizError, match="keys must be"): project_2d(torch.randn(1, 4))
    with pytest.raises(VizError, match="NaN or inf"): project_2d(torch.tensor([[0.0, 1.0], [math.nan, 2.0], [1.0, 1.0]]))
    with pytest.raises(VizError, match="method must be 'pca' or 'axes'"): project_2d(torch.randn(5, 3), "tsne")

# --- figures

def test_splat_figure_parts(run):
    reg, keys, snaps, _, _ = run
    s = snaps[-1]; proj = project_2d(keys[1]); fig = splat_figure(s, proj(keys[1]), proj, head=1)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1 + 4 * len(s["levels"])
    for l in range(len(s["levels"])):
        centres = fig.data[4 + 4 * l]
        assert len(centres.x) == s["counts"][l][1] and all(f"id {i} " in t for i, t in zip(s["levels"][l]["heads"][1]["ids"], centres.hovertext))
        rings = sum(sum(v is None for v in t.x) for t in fig.data[1 + 4 * l: 4 + 4 * l])
        assert rings == s["counts"][l][1]                                   # one ellipse per live splat
    assert fig.data[1].line.color != fig.data[5].line.color                 # a colour per level
    assert len(fig.to_json()) < 300_000

def test_splat_figure_bad_input(run):
    reg, keys, snaps, _, _ = run
    proj = project_2d(keys[0]); k2 = proj(keys[0])
    with pytest.raises(VizError, match="head 2 out of range: the snapshot has 2 heads"): splat_figure(snaps[0], k2, proj, head=2)
    with pytest.raises(VizError, match="head -1 out of range"): splat_figure(snaps[0], k2, proj, head=-1)
    with pytest.raises(VizError, match=r"keys_2d must be \[n, 2\]"): splat_figure(snaps[0], keys[0], proj)
    with pytest.raises(VizError, match="not a splat snapshot"): splat_figure({"step": 0}, k2, proj)

def test_steps_figure_has_a_frame_per_snapshot(run):
    reg, keys, snaps, _, _ = run
    fig = splat_steps_figure(snaps, keys, head=0)
    assert len(fig.frames) == len(snaps) and len(fig.layout.sliders[0].steps) == len(snaps)
    assert [s.label for s in fig.layout.sliders[0].steps] == [str(s["step"]) for s in snaps]
    for f, s in zip(fig.frames, snaps):
        assert list(f.traces) == list(range(1, 1 + 4 * len(s["levels"])))
        assert len(f.data[3].x) == s["counts"][0][0]
    assert len(fig.to_json()) < 300_000
    shared = splat_steps_figure(snaps, keys[0], head=1)                   # one set of keys for every head
    assert len(shared.frames) == len(snaps)

def test_steps_figure_bad_input(run):
    reg, keys, snaps, _, _ = run
    with pytest.raises(VizError, match="non-empty list of snapshots"): splat_steps_figure([], keys)
    with pytest.raises(VizError, match="non-empty list of snapshots"): splat_steps_figure(snaps[0], keys)
    with pytest.raises(VizError, match="head 5 out of range"): splat_steps_figure(snaps, keys, head=5)
    with pytest.raises(VizError, match=r"keys \[h, n, d\] must have h = 2 heads"): splat_steps_figure(snaps, keys[:1].expand(3, -1, -1))
    with pytest.raises(VizError, match=r"keys must be \[n, 8\]"): splat_steps_figure(snaps, keys[..., :6])
    other = snapshot(SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(4,))), 99)
    with pytest.raises(VizError, match="snapshot 1 has"): splat_steps_figure([snaps[0], other], keys)

def test_figures_stay_small_with_many_tokens_and_heads():
    reg = SplatRegistry(SplatConfig(n_heads=12, head_dim=64, level_sizes=(32, 16, 8)), seed=0)
    snaps = [snapshot(reg, 0), snapshot(reg, 1), snapshot(reg, 2)]
    keys = torch.randn(12, 5000, 64)
    fig = splat_steps_figure(snaps, keys, head=3)
    assert len(fig.data[0].x) == 400                                        # tokens subsampled
    assert len(fig.to_json()) < 300_000
    ex = splat_explorer(snaps, keys, heads=[0, 3])
    assert len(json.dumps(ex.out.outputs[0]["data"], default=str)) < 600_000   # JSON + HTML of one figure

# --- explorer

def test_explorer_slider_and_dropdowns_redraw(run):
    reg, keys, snaps, events, _ = run
    ex = splat_explorer(snaps, keys, events)
    assert isinstance(ex, SplatExplorer) and ex.step.max == len(snaps) - 1 and ex.layer is None
    assert [o[1] for o in ex.head.options] == [0, 1]
    first_fig, first_out = ex.figure.to_json(), ex.out.outputs
    ex.step.value = 1
    assert ex.figure.to_json() != first_fig and ex.out.outputs != first_out
    assert ex.figure.layout.title.text.startswith(f"step {snaps[1]['step']}")
    assert len(ex.figure.data[4].x) == snaps[1]["counts"][0][0]
    assert events[0]["op"] in ex.info.value or "no adaptation events" in ex.info.value
    ex.head.value = 1
    assert "head 1" in ex.figure.layout.title.text and len(ex.figure.data[4].x) == snaps[1]["counts"][0][1]
    assert "split" in ex.info.value                                          # round 1 split a splat of head 1
    ex.step.value = 2                                                        # (10, 20]: only a birth in head 0
    assert "no adaptation events in steps (10, 20] of head 1" in ex.info.value
    ex.head.value = 0
    assert "birth" in ex.info.value and "split" not in ex.info.value
    bundle = ex.out.outputs[0]["data"]
    assert "text/html" in bundle or "application/vnd.plotly.v1+json" in bundle

def test_explorer_layers(run):
    reg, keys, snaps, events, _ = run
    reg2, keys2, snaps2, events2, _ = _run(rounds=3, seed=1)
    ex = splat_explorer({"layer 0": snaps, "layer 5": snaps2}, {"layer 0": keys, "layer 5": keys2}, {"layer 0": events, "layer 5": events2})
    assert list(ex.layer.options) == ["layer 0", "layer 5"]
    ex.step.value = len(snaps) - 1
    ex.layer.value = "layer 5"
    assert ex.step.max == len(snaps2) - 1 and ex.step.value == len(snaps2) - 1
    assert ex.figure.layout.title.text.startswith(f"step {snaps2[-1]['step']}")
    only = splat_explorer({"a": snaps, "b": snaps2}, {"a": keys, "b": keys2}, layers=["b"])
    assert list(only.layer.options) == ["b"]

def test_explorer_bad_input(run):
    reg, keys, snaps, events, _ = run
    with pytest.raises(VizError, match="non-empty list of snapshots"): splat_explorer([], keys)
    with pytest.raises(VizError, match="head 7 out of range"): splat_explorer(snaps, keys, heads=[0, 7])
    with pytest.raises(VizError, match=r"layers \['c'\] not among"): splat_explorer({"a": snaps}, {"a": keys}, layers=["c"])
    with pytest.raises(VizError, match=r"keys must be \[n, 8\]"): splat_explorer(snaps, keys[..., :3])

# --- attention maps

def test_attention_maps_are_exact_weights():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=4, level_sizes=(5, 2), local_window=3), seed=0)
    with torch.no_grad(): reg.hierarchy.level_logits.normal_()
    q, k = torch.randn(20, 4), torch.randn(20, 4)
    maps = attention_maps(q, k, reg, causal=True, local_window=3, head=1)
    assert list(maps) == ["softmax", "splats", "hybrid (window 3)"]
    eye = torch.eye(20)[None, None]
    with torch.no_grad():
        sub = {kk: (v[1:2] if kk != "level" and v is not None else v) for kk, v in reg.stacked().items()}
        ref = reference_attention(q[None, None], k[None, None], eye, sub, True)[0, 0]
        hyb = reference_attention(q[None, None], k[None, None], eye, sub, True, local_window=3, log_w_local=reg.hierarchy.log_weight("local"))[0, 0]
    assert torch.allclose(maps["splats"], ref, atol=1e-5) and torch.allclose(maps["hybrid (window 3)"], hyb, atol=1e-5)
    for a in maps.values(): assert torch.allclose(a.sum(-1), torch.ones(20), atol=1e-5) and a.triu(1).abs().max() == 0

def test_attention_maps_figure_parts_and_gqa():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(6,)), seed=0)
    q, k, v = torch.randn(1, 4, 64, 8), torch.randn(1, 2, 64, 8), torch.randn(64, 5)
    fig = attention_maps_figure(q, k, v, reg, causal=False, head=3)        # query head 3 → key/value head 1
    assert len(fig.data) == 2 and "output error" in fig.layout.annotations[1].text
    assert torch.allclose(torch.tensor(fig.data[1].z).sum(-1), torch.ones(64), atol=5e-3)
    assert len(attention_maps_figure(q[0, 0], k[0, 0], None, snapshot(reg, 0), local_window=4).data) == 3
    assert len(fig.to_json()) < 300_000

def test_attention_maps_bad_input():
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=4, level_sizes=(3,)), seed=0)
    with pytest.raises(VizError, match="attention maps are for short sequences"): attention_maps_figure(torch.randn(129, 4), torch.randn(129, 4), None, reg)
    with pytest.raises(VizError, match="splats are for 1 heads of dim 4"): attention_maps_figure(torch.randn(9, 4), torch.randn(9, 4), None, reg, head=1)
    with pytest.raises(VizError, match="splats are for 1 heads of dim 4"): attention_maps_figure(torch.randn(9, 6), torch.randn(9, 6), None, reg)
    with pytest.raises(VizError, match="q and k must be"): attention_maps_figure(torch.randn(9, 4), torch.randn(9, 5), None, reg)
    with pytest.raises(VizError, match="NaN or inf"): attention_maps_figure(torch.full((9, 4), math.inf), torch.randn(9, 4), None, reg)
    with pytest.raises(VizError, match="splats must be a SplatRegistry"): attention_maps_figure(torch.randn(9, 4), torch.randn(9, 4), None, [1, 2])

# --- events

def test_events_timeline_parts(run):
    reg, keys, snaps, events, history = run
    fig = events_timeline(events, history)
    ops = [t.name for t in fig.data if t.mode == "markers"]
    assert ops == ["split", "birth", "merge"]                               # in the fixed op order
    assert sum(len(t.x) for t in fig.data if t.mode == "markers") == len(events)
    counts = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(counts) == 2 and list(counts[0].y) == [sum(h["counts"][0]) for h in history]
    assert any(str(events[0]["ids_out"]) in t for t in fig.data[0].hovertext)
    by_level = events_timeline(events, by="level")
    assert list(by_level.layout.yaxis.ticktext) == ["level 0"] and len(by_level.data) == 3
    assert "(none)" in events_timeline([], history).layout.title.text
    assert len(fig.to_json()) < 300_000

def test_events_timeline_bad_input(run):
    *_, events, history = run
    with pytest.raises(VizError, match=r"event 1 is missing \['ids_out'\]"): events_timeline([events[0], {k: v for k, v in events[1].items() if k != "ids_out"}])
    with pytest.raises(VizError, match="events must be a list of dicts"): events_timeline({"step": 1})
    with pytest.raises(VizError, match="history must be a list of dicts with 'step' and 'counts'"): events_timeline(events, [{"step": 1}])
    with pytest.raises(VizError, match="by must be 'op' or 'level'"): events_timeline(events, by="head")

# --- edge cases

def test_a_level_with_no_live_splats():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=4, level_sizes=(3, 2)), seed=0)
    for s in reg.splats(level=1, head=0): reg.unregister(s.id)
    snap = snapshot(reg, 1)
    assert snap["counts"][1] == [0, 2] and snap["levels"][1]["heads"][0]["ids"] == []
    st = snapshot_splats(snap)
    assert torch.isinf(st["log_coef"][0, 3:]).all() and torch.isfinite(st["log_coef"][1, 3:5]).all()
    keys = torch.randn(30, 4); proj = project_2d(keys)
    fig = splat_figure(snap, proj(keys), proj, head=0)
    assert len(fig.data) == 9 and len(fig.data[8].x) == 0
    assert len(splat_steps_figure([snap, snapshot(reg, 2)], keys).frames) == 2

def test_explorer_output_follows_the_shared_plotly_renderer(run, capsys):
    import plotly.io as pio
    from hsa_lib.core import use_plotly_renderer
    reg, keys, snaps, events, _ = run
    old = pio.renderers.default
    try:
        use_plotly_renderer()
        ex = splat_explorer(snaps, keys)
        ex.step.value = 2
        bundle = ex.out.outputs[0]["data"]
        assert set(bundle) == {"application/vnd.plotly.v1+json", "text/html"}
        assert "Plotly.newPlot" in bundle["text/html"] and bundle["application/vnd.plotly.v1+json"]["data"][1]["type"] == "scatter"
        assert "<script" not in capsys.readouterr().out                     # no renderer set-up printed per redraw
    finally: pio.renderers.default = old

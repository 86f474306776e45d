"HSA failures: every failure kind induced for real and recovered, no false alarms on healthy registries, bit-exact rollback after growth, bad input refused by name."
import logging, math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import ConfigError
from hsa_lib.hsa.splats import SplatConfig, SplatRegistry, SplatError
from hsa_lib.hsa.attention import splat_attention
from hsa_lib.hsa.failures import (KINDS, Checkpointer, Failure, HealthCheck, HealthInputError, attention_probe, check_keys, clamp_,
                                  diagnose, effective_splats, kmeans_pp, level_shares, recover, reinit_from_keys, sample_from_splats)

CFG = SplatConfig(n_heads=2, head_dim=16, level_sizes=(8, 4, 2))

@pytest.fixture
def reg(): return SplatRegistry(CFG, seed=0)

@pytest.fixture
def keys(reg): return sample_from_splats(reg, 256, seed=1)

def assert_usable(r, keys, kind=None):
    "Finite, non-empty attention; the probe is clean; diagnose finds nothing of `kind` (of any kind when None)."
    o, _ = splat_attention(keys[None], keys[None], keys[None], r.stacked())
    assert torch.isfinite(o).all() and (o.abs().sum(-1) > 0).all(), "attention is not usable"
    assert (attention_probe(r, keys) == 0).all()
    fs = diagnose(r, keys)
    assert [f for f in fs if kind is None or f.kind == kind] == [], [str(f) for f in fs]

def params(r): return {k: v.clone() for k, v in r.state_dict().items()}

# ---------------------------------------------------------------- healthy registries: no false alarms
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 3), d=st.sampled_from([4, 8, 16, 32, 64]),
       sizes=st.lists(st.integers(2, 12), min_size=1, max_size=3), rank=st.sampled_from([0, 1]), window=st.sampled_from([0, 4]))
def test_no_false_alarm_on_data_the_registry_models(seed, h, d, sizes, rank, window):
    r = SplatRegistry(SplatConfig(n_heads=h, head_dim=d, level_sizes=tuple(sizes), rank=rank, local_window=window), seed=seed)
    assert diagnose(r) == []
    assert diagnose(r, sample_from_splats(r, 256, seed=seed)) == []

@pytest.mark.parametrize("seed", range(5))
def test_no_false_alarm_after_reinit_on_clustered_keys(seed):
    "Keys in as many clusters as the coarsest level has splats, every level fitted to them by k-means++."
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, 2, 32, generator=g) * 3
    k = centres[:, torch.randint(0, 2, (400,), generator=g)] + 0.5 * torch.randn(2, 400, 32, generator=g)
    r = SplatRegistry(SplatConfig(n_heads=2, head_dim=32, level_sizes=(10, 5, 2)), seed=seed)
    reinit_from_keys(r, k, seed=seed)
    assert diagnose(r, k) == []

def test_coarse_level_wider_than_its_clusters_still_carries_attention():
    "8 clusters, 1 coarse splat ~15x wider than a fine one: the peak-normalized kernel (φ_s(μ_s) = 1) keeps its share (the density-normalized one left it ~1e-30)."
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 8, 32, generator=g) * 8
    k = centres[:, torch.randint(0, 8, (400,), generator=g)] + 0.5 * torch.randn(2, 400, 32, generator=g)
    r = SplatRegistry(SplatConfig(n_heads=2, head_dim=32, level_sizes=(16, 1)), seed=0)
    reinit_from_keys(r, k)
    assert [f for f in diagnose(r, k) if f.kind == "dead_level"] == []
    assert level_shares(r, k)[1] > 0.05

def test_level_with_tiny_amplitudes_is_dead_and_recovered(reg, keys):
    "Amplitudes e^-60 below the rest: the level supplies no attention mass; recovery (clamp, then re-fit if still needed) gives it its share back."
    with torch.no_grad(): reg.log_amp[1] -= 60
    fs = diagnose(reg, keys)
    dead = [f for f in fs if f.kind == "dead_level"]
    assert [(f.measure, f.level) for f in dead] == [("mass_share", 1)] and dead[0].value < 1e-20
    acts = recover(reg, fs, keys)
    assert [a["level"] for a in acts if a["kind"] == "dead_level"] == [1]
    assert level_shares(reg, keys)[1] >= HealthCheck().min_level_share
    assert_usable(reg, keys, "dead_level"); assert_usable(reg, keys, "nonfinite")

def test_default_registry_on_unit_keys_has_every_level_alive():
    "The default geometry against unit keys at d=64: every level keeps a share (the coarse level was dead under the density-normalized kernel)."
    r = SplatRegistry(SplatConfig(n_heads=1, head_dim=64), seed=0); k = torch.randn(1, 128, 64)
    assert [f for f in diagnose(r, k) if f.kind == "dead_level"] == []
    assert (level_shares(r, k) > 0.05).all()

# ---------------------------------------------------------------- 1. non-finite values
@pytest.mark.parametrize("where", ["mu", "log_sigma", "log_amp"])
def test_nan_in_live_splat_rollback(reg, keys, where):
    ck = Checkpointer(); assert ck.save(reg, step=3); good = params(reg)
    with torch.no_grad(): getattr(reg, where)[1][0, 2] = math.nan
    fs = diagnose(reg, keys)
    assert {(f.measure, f.level, f.head) for f in fs if f.kind == "nonfinite"} >= {("parameters", 1, 0)}
    assert next(f for f in fs if f.measure == "parameters").ids == [int(reg.buf("ids", 1)[0, 2])]
    acts = recover(reg, fs, keys, ck)
    assert {a["action"] for a in acts if a["kind"] == "nonfinite"} == {"rollback"}
    assert all(torch.equal(v, good[k]) for k, v in reg.state_dict().items())
    assert_usable(reg, keys)

def test_nan_in_live_splat_reinit_without_checkpoint(reg, keys):
    with torch.no_grad(): reg.mu[0][1, 4, 0] = math.inf
    sid = int(reg.buf("ids", 0)[1, 4])
    acts = recover(reg, diagnose(reg, keys), keys)
    assert acts[0]["action"] == "reinit_from_keys" and acts[0]["ids"] == [sid]
    assert reg.lookup(sid) == (0, 1, 4)                      # the id survives
    assert_usable(reg, keys)

def test_nan_without_keys_or_checkpoint_unregisters(reg, keys):
    with torch.no_grad(): reg.log_amp[0][0, 1] = math.nan
    sid = int(reg.buf("ids", 0)[0, 1])
    acts = recover(reg, diagnose(reg), None)
    assert [a["action"] for a in acts] == ["unregister"]
    with pytest.raises(SplatError): reg.lookup(sid)
    assert [f for f in diagnose(reg) if f.kind == "nonfinite"] == []
    assert_usable(reg, keys)

def test_nan_in_free_slot_is_masked_and_caught(reg, keys):
    "A NaN in a free slot cannot reach the output (free slots are masked), and diagnose still reports it so it gets reset."
    before, _ = splat_attention(keys[None], keys[None], keys[None], reg.stacked())
    with torch.no_grad(): reg.log_sigma[0][1, 12] = math.nan     # slot 12 is free
    o, _ = splat_attention(keys[None], keys[None], keys[None], reg.stacked())
    assert torch.equal(o, before)
    fs = diagnose(reg, keys)
    assert {(f.kind, f.measure, f.head) for f in fs} == {("nonfinite", "parameters", 1)} and fs[0].ids == []
    assert [a["action"] for a in recover(reg, fs, keys)] == ["reset_free_slots"]
    assert torch.isfinite(reg.log_sigma[0]).all()
    assert_usable(reg, keys)

def test_nan_level_logit(reg, keys):
    with torch.no_grad(): reg.hierarchy.level_logits[2] = math.nan
    fs = diagnose(reg, keys)
    assert ("level_logit", 2) in {(f.measure, f.level) for f in fs}
    recover(reg, fs, keys); assert_usable(reg, keys)

def test_nan_in_low_rank_factor(keys):
    r = SplatRegistry(SplatConfig(n_heads=2, head_dim=16, level_sizes=(8, 4, 2), rank=2), seed=0)
    with torch.no_grad(): r.u[1][1, 0, 3, 1] = math.nan
    fs = diagnose(r, keys)
    assert any((f.measure, f.level, f.head, f.slots) == ("parameters", 1, 1, [0]) for f in fs)
    recover(r, fs, keys); assert_usable(r, keys)

def test_nonfinite_outputs_given_by_the_caller(reg):
    out = torch.zeros(2, 3, 5, 4); out[1, 2, 0, 0] = math.nan
    fs = diagnose(reg, outputs=out)
    assert [(f.kind, f.measure, f.head) for f in fs] == [("nonfinite", "outputs", 2)]
    assert fs[0].value == pytest.approx(1 / out.numel())

# ---------------------------------------------------------------- 2. collapse
def test_collapse_too_few_live_recovered_from_keys(reg, keys):
    for s in reg.splats(level=0, head=1)[1:]: reg.unregister(s.id)
    fs = [f for f in diagnose(reg, keys) if f.kind == "collapse"]
    assert [(f.measure, f.level, f.head, f.value, f.threshold) for f in fs] == [("live_splats", 0, 1, 1, 2)]
    acts = recover(reg, fs, keys)
    assert acts[0]["action"] == "reinit_level_head" and len(acts[0]["ids"]) == 8
    assert reg.counts()[0, 1] == 8
    assert_usable(reg, keys)

def test_collapse_without_keys_splits_the_survivor(reg, keys):
    for s in reg.splats(level=1, head=0)[1:]: reg.unregister(s.id)
    acts = recover(reg, diagnose(reg), None)
    assert acts[0]["action"] == "split_to_floor" and reg.counts()[1, 0] == 2
    assert [f for f in diagnose(reg) if f.kind == "collapse"] == []

def test_collapse_to_zero_without_keys_needs_keys(reg):
    for s in reg.splats(level=2, head=1): reg.unregister(s.id)
    fs = diagnose(reg)
    with pytest.raises(HealthInputError, match="needs keys"): recover(reg, fs, None)
    # with keys it works
    k = sample_from_splats(reg, 128)
    recover(reg, diagnose(reg, k), k); assert reg.counts()[2, 1] == 2 and [f for f in diagnose(reg, k) if f.kind == "collapse"] == []

def test_recover_without_keys_refuses_what_needs_keys(reg, keys):
    with torch.no_grad(): reg.mu[0][0, 3] += 1e3
    fs = diagnose(reg, keys)
    with pytest.raises(HealthInputError, match="underflow .* needs keys"): recover(reg, fs, None)

def test_collapse_by_mass(reg, keys):
    with torch.no_grad(): reg.log_amp[0][1, 2] = 12.0; reg.log_sigma[0][1, 2] = math.log(2.0); reg.mu[0][1, 2] = keys[1].mean(0)
    fs = [f for f in diagnose(reg, keys) if f.kind == "collapse"]
    assert [(f.measure, f.level, f.head) for f in fs] == [("effective_splats", 0, 1)]
    assert fs[0].value < 2 and fs[0].ids[0] == int(reg.buf("ids", 0)[1, 2])
    before = effective_splats(reg, keys)[0, 1]
    recover(reg, fs, keys)
    assert effective_splats(reg, keys)[0, 1] > 2 * before
    assert_usable(reg, keys)

# ---------------------------------------------------------------- 3. dead levels
def test_dead_level_by_weight(reg, keys):
    with torch.no_grad(): reg.hierarchy.level_logits[0] = -50.0
    fs = diagnose(reg, keys)
    assert [(f.kind, f.measure, f.level) for f in fs] == [("dead_level", "level_weight", 0)]
    assert [a["action"] for a in recover(reg, fs, keys)] == ["reset_level_logit"]
    assert reg.hierarchy.weights().min() > 0.1
    assert_usable(reg, keys)

def test_dead_local_window():
    r = SplatRegistry(SplatConfig(n_heads=2, head_dim=16, level_sizes=(8, 4), local_window=4), seed=0)
    with torch.no_grad(): r.hierarchy.level_logits[0] = -60.0
    fs = diagnose(r)
    assert [(f.kind, f.level) for f in fs] == [("dead_level", -1)]
    recover(r, fs); assert diagnose(r) == []

def test_dead_level_by_share(reg, keys):
    with torch.no_grad(): reg.mu[1] += 1e3                     # every level-1 splat far from the data
    fs = diagnose(reg, keys)
    assert ("dead_level", "mass_share", 1) in {(f.kind, f.measure, f.level) for f in fs}
    assert level_shares(reg, keys)[1] < 1e-6
    acts = recover(reg, fs, keys)
    assert any(a["action"] == "reinit_level" for a in acts)
    assert_usable(reg, keys)

# ---------------------------------------------------------------- 4. underflow
def test_underflow_reinit_only_the_lost_splats(reg, keys):
    with torch.no_grad(): reg.mu[0][0, [1, 5]] -= 1e3
    fs = diagnose(reg, keys)
    lost = [int(reg.buf("ids", 0)[0, s]) for s in (1, 5)]
    assert [(f.kind, f.level, f.head, f.ids, f.value) for f in fs] == [("underflow", 0, 0, lost, 1.0)]
    keep = params(reg)
    recover(reg, fs, keys)
    others = [s for s in range(8) if s not in (1, 5)]
    assert torch.equal(reg.mu[0][0, others], keep["mu.0"][0, others]) and torch.equal(reg.mu[0][1], keep["mu.0"][1])
    assert (reg.mu[0][0, [1, 5]].abs() < 50).all()
    assert_usable(reg, keys)

def test_underflow_all_centres_far(reg, keys):
    with torch.no_grad():
        for l in range(reg.n_levels): reg.mu[l] += 1e3
    fs = diagnose(reg, keys)
    assert sorted(i for f in fs if f.kind == "underflow" for i in f.ids) == sorted(s.id for s in reg.splats())
    recover(reg, fs, keys); assert_usable(reg, keys)

# ---------------------------------------------------------------- 5. exploding
def test_exploding_scales_and_amplitudes(reg, keys):
    with torch.no_grad(): reg.log_sigma[0][0, 1] = 30.0; reg.log_amp[2][1, 0] = -25.0; reg.log_sigma[1][1, 3, 7] = -12.0
    fs = [f for f in diagnose(reg, keys) if f.kind == "exploding"]
    assert {(f.measure, f.level, f.head, tuple(f.slots), f.value) for f in fs} == {
        ("log_sigma", 0, 0, (1,), 30.0), ("log_sigma", 1, 1, (3,), -12.0), ("log_amp", 2, 1, (0,), -25.0)}
    assert all(a["action"] == "clamp" for a in recover(reg, fs, keys))
    assert_usable(reg, keys, "exploding")
    assert reg.log_sigma[0][0, 1].abs().max() < 10    # the giant takes its level's typical scale, not the clamp bound

def test_overflowing_scale_breaks_the_kernels_and_is_clamped(reg, keys):
    "log σ = −50: exp(−2 log σ) overflows fp32, the kernel sums turn NaN (and splat_attention silently returns zeros)."
    with torch.no_grad(): reg.log_sigma[0][0, 0] = -50.0
    fs = diagnose(reg, keys)
    assert {(f.kind, f.measure) for f in fs} >= {("exploding", "log_sigma"), ("nonfinite", "attention_sums")}
    recover(reg, fs, keys)
    assert_usable(reg, keys, "nonfinite"); assert_usable(reg, keys, "exploding")

# ---------------------------------------------------------------- recovery building blocks
def test_kmeans_pp_is_seeded_and_handles_more_centres_than_points():
    x = torch.randn(50, 3)
    a, b = kmeans_pp(x, 4, seed=7), kmeans_pp(x, 4, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    C, asg = kmeans_pp(x[:3], 5)
    assert C.shape == (5, 3) and torch.isfinite(C).all() and asg.shape == (3,)
    C, asg = kmeans_pp(torch.ones(10, 3), 3)                    # all points equal: no zero-probability sampling error
    assert torch.equal(C, torch.ones(3, 3))

def test_reinit_keeps_ids_and_resets_optimizer_state(reg, keys):
    opt = reg.attach_optimizer(torch.optim.Adam(reg.parameters(), lr=0.1))
    loss = sum(p.sum() for p in reg.parameters()); loss.backward(); opt.step()
    ids = [s.id for s in reg.splats(level=1, head=1)]
    assert sorted(reinit_from_keys(reg, keys, level=1, head=1)) == sorted(ids)
    slots = reg.buf("alive", 1)[1].nonzero().flatten()
    assert (opt.state[reg.mu[1]]["exp_avg"][1, slots] == 0).all() and (opt.state[reg.mu[1]]["exp_avg"][0] != 0).any()

def test_clamp_counts_and_leaves_nan(reg):
    with torch.no_grad(): reg.log_amp[0][0, 0] = 50.0; reg.log_amp[0][0, 1] = math.nan
    assert clamp_(reg) == 1
    assert reg.log_amp[0][0, 0].item() == 20.0 and math.isnan(reg.log_amp[0][0, 1].item())

def test_recover_logs_and_reports_every_action(reg, keys, caplog):
    with torch.no_grad(): reg.hierarchy.level_logits[1] = -50.0; reg.log_sigma[2][0, 0] = 20.0
    fs = diagnose(reg, keys)
    with caplog.at_level(logging.WARNING, logger="hsa_lib"):
        acts = recover(reg, fs, keys)
    assert len(acts) == len(fs) and all(set(a) == {"kind", "measure", "level", "head", "ids", "action", "detail"} for a in acts)
    assert sum("recover:" in r.message for r in caplog.records) == len(acts)
    assert {a["kind"] for a in acts} <= set(KINDS)
    assert_usable(reg, keys)

# ---------------------------------------------------------------- checkpoints
def test_rollback_is_bitwise_after_growth_with_attached_optimizer(reg, keys):
    opt = reg.attach_optimizer(torch.optim.Adam(reg.parameters(), lr=0.01))
    ck = Checkpointer(); assert ck.save(reg, step=1); good = params(reg)
    for _ in range(30): reg.register(0, 1, torch.randn(16), 0.0)      # level 0 grows (16 → 32 → 64 slots)
    assert reg.capacity(0) > 16
    loss = sum(p.sum() for p in reg.parameters()); loss.backward(); opt.step()
    with torch.no_grad(): reg.mu[2][0, 0] = math.nan
    ck.rollback(reg)
    assert [reg.capacity(l) for l in range(3)] == [16, 8, 4]
    assert set(reg.state_dict()) == set(good) and all(torch.equal(v, good[k]) for k, v in reg.state_dict().items())
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], reg.parameters()))   # optimizer follows the restored params
    assert all(p not in opt.state for p in reg.parameters())                              # moments of the failed run dropped
    reg.zero_grad(); sum(p.sum() for p in reg.parameters()).backward(); opt.step()        # and it still trains
    assert_usable(reg, keys, "nonfinite")
    new = reg.register(0, 0, torch.zeros(16), 0.0); assert reg.lookup(new)[0] == 0         # and still registers

def test_rollback_restores_the_optimizer_it_was_given(reg):
    opt = reg.attach_optimizer(torch.optim.Adam(reg.parameters(), lr=0.01))
    sum(p.sum() for p in reg.parameters()).backward(); opt.step()
    ck = Checkpointer(opt); ck.save(reg, step=1)
    saved = {k: v.clone() for k, v in opt.state[reg.mu[0]].items()}
    for _ in range(3): opt.step()
    for _ in range(20): reg.register(0, 0, torch.randn(16), 0.0)
    ck.rollback(reg)
    assert all(torch.equal(opt.state[reg.mu[0]][k], v) for k, v in saved.items())

def test_checkpointer_refuses_bad_states_and_foreign_registries(reg):
    ck = Checkpointer()
    with pytest.raises(HealthInputError, match="nothing to roll back to"): ck.rollback(reg)
    with torch.no_grad(): reg.log_sigma[0][0, 15] = math.inf     # even in a free slot
    assert not ck.save(reg) and not ck.has_state
    r2 = SplatRegistry(SplatConfig(n_heads=2, head_dim=16, level_sizes=(8, 4)), seed=0); assert ck.save(r2)
    with pytest.raises(HealthInputError, match="checkpoint is of a registry with config"): ck.rollback(reg)

# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, msg", [
    (torch.randn(2, 10), "keys must be a tensor [h, n, d] or [b, h, n, d]"),
    (torch.randn(3, 10, 16), "keys must have 2 heads of dim 16"),
    (torch.randn(1, 2, 10, 8), "keys must have 2 heads of dim 16"),
    (torch.randn(2, 0, 16), "at least one token"),
    (torch.ones(2, 10, 16, dtype=torch.long), "floating point"),
    ([[0.0] * 16] * 2, "keys must be a tensor"),
])
def test_bad_keys_are_refused(reg, bad, msg):
    with pytest.raises(HealthInputError, match=msg.replace("[", r"\[").replace("]", r"\]")): diagnose(reg, bad)
    with pytest.raises(HealthInputError, match=msg.replace("[", r"\[").replace("]", r"\]")): reinit_from_keys(reg, bad)

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_keys_are_refused(reg, keys, value):
    k = keys.clone(); k[1, 7, 3] = value
    for fn in (lambda: diagnose(reg, k), lambda: reinit_from_keys(reg, k, level=0), lambda: recover(reg, [], k)):
        with pytest.raises(HealthInputError, match="1 NaN/inf values"): fn()

def test_bad_reinit_targets_and_settings(reg, keys):
    with pytest.raises(HealthInputError, match="level 3 out of range"): reinit_from_keys(reg, keys, level=3)
    with pytest.raises(HealthInputError, match="head -1 out of range"): reinit_from_keys(reg, keys, head=-1)
    with pytest.raises(SplatError, match="no live splat has id 999"): reinit_from_keys(reg, keys, ids=[999])
    sid = reg.splats(level=0, head=0)[0].id
    with pytest.raises(HealthInputError, match=f"splat {sid} is at level 0, head 0"): reinit_from_keys(reg, keys, level=1, ids=[sid])
    with pytest.raises(HealthInputError, match="outputs must be a tensor"): diagnose(reg, outputs=[1.0])
    with pytest.raises(HealthInputError, match="low < high"): clamp_(reg, (1.0, -1.0))
    with pytest.raises(ConfigError, match="underflow_frac"): HealthCheck(underflow_frac=0)
    with pytest.raises(ConfigError, match="no field"): HealthCheck.from_dict({"min_lives": 3})
    assert HealthCheck.from_json(HealthCheck(log_amp_range=(-5, 5)).to_json()) == HealthCheck(log_amp_range=(-5, 5))

"HSA training pieces and splat checkpoints: gradients, param groups, schedules, regularizers, exact round trips, and every way a checkpoint can be wrong."
import json, math, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
import torch, torch.nn as nn, torch.nn.functional as F
from hsa_lib.core import CorruptFileError
from hsa_lib.hsa.splats import SplatConfig, SplatRegistry
from hsa_lib.hsa.attention import HSAttention, splat_attention, reference_attention
from hsa_lib.hsa import training as T, serialization as S

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny tensors: one thread is fastest (more only wait on each other when the cores are shared)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_splat_attention(causal):
    "Full (not fast-mode) gradcheck of splat_attention w.r.t. inputs and stacked splats: padding, grouped heads, free slots, several chunks."
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=3, level_sizes=(2, 1), rank=1), seed=3).double()
    with torch.no_grad(): reg.u[0].normal_(0, 0.3)
    st = reg.stacked(); g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.tensor([[True, True, False, True, True]])
    leaves = [st[n].detach().clone().requires_grad_() for n in ("mu", "log_sigma", "log_coef", "u")]
    def f(q, k, v, mu, ls, lc, u): return splat_attention(q, k, v, dict(mu=mu, log_sigma=ls, log_coef=lc, u=u), causal, mask, chunk=2)[0]
    assert torch.autograd.gradcheck(f, (q, k, v, *leaves), eps=1e-6, atol=1e-6)

@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_hsattention_block(causal):
    "Every parameter of an HSAttention block (projections, splats, level logits), hybrid window included, has exact gradients."
    att = HSAttention(8, n_heads=2, n_kv_heads=1, splats=SplatConfig(n_heads=1, head_dim=4, level_sizes=(2, 1), rank=1, local_window=2),
                      causal=causal, chunk=3, seed=0).double()
    names = [n for n, _ in att.named_parameters()]
    x = torch.randn(1, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    def f(x, *ps): return torch.func.functional_call(att, dict(zip(names, ps)), (x,))
    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_() for p in att.parameters()]), eps=1e-6, atol=1e-6)

def test_gradients_reach_every_level_parameter_through_a_model():
    lm = T.TinyHSALM(50, d_model=16, n_layers=2, n_heads=2, max_len=8, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 2)), seed=0)
    T.lm_loss(lm, torch.randint(0, 50, (2, 9))).backward()
    for reg in T.splat_registries(lm).values():
        for p in reg.parameters(): assert p.grad is not None and torch.isfinite(p.grad).all()
        assert reg.mu[0].grad.abs().sum() > 0

# ---------------------------------------------------------------- param groups and schedule

def test_param_groups_partition_every_trainable_parameter_once():
    lm = T.TinyHSALM(40, d_model=16, n_layers=2, n_heads=2, max_len=8, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 2), rank=1), seed=0)
    lm.pos.weight.requires_grad_(False)
    groups = T.param_groups(lm, lr=1e-3, splat_lr=5e-3, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in lm.parameters() if p.requires_grad}
    by = {g["name"]: g for g in groups}
    assert {id(p) for p in by["splats"]["params"]} == {id(p) for r in T.splat_registries(lm).values() for p in r.parameters()}
    assert (by["splats"]["lr"], by["splats"]["weight_decay"]) == (5e-3, 0.0)
    assert all(p.dim() >= 2 for p in by["decay"]["params"]) and by["decay"]["weight_decay"] == 0.05
    assert all(p.dim() < 2 for p in by["no_decay"]["params"]) and by["no_decay"]["weight_decay"] == 0.0
    torch.optim.AdamW(groups).step()   # a valid optimizer spec

@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=1e-3, splat_lr=-1.0), dict(lr=1e-3, weight_decay=-0.1)])
def test_param_groups_rejects_bad_hyperparameters(kw):
    with pytest.raises(T.TrainingError): T.param_groups(nn.Linear(2, 2), **kw)

def test_warmup_cosine_values():
    p = nn.Parameter(torch.zeros(1)); opt = torch.optim.SGD([p], lr=0.5)
    sched = T.warmup_cosine(opt, warmup_steps=4, total_steps=12, min_lr_ratio=0.2)
    lrs = []
    for _ in range(20): lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    expect = {0: 0.5 * 1 / 4, 1: 0.5 * 2 / 4, 3: 0.5, 4: 0.5, 8: 0.5 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2))), 12: 0.1, 19: 0.1}
    for step, lr in expect.items(): assert lrs[step] == pytest.approx(lr, rel=1e-12), step
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:4])) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    opt2 = torch.optim.SGD([p], lr=0.5); s2 = T.warmup_cosine(opt2, 4, 12, 0.2); s2.load_state_dict(sched.state_dict())
    assert s2.last_epoch == sched.last_epoch   # resumable

def test_warmup_cosine_without_warmup_and_bad_arguments():
    assert T.lr_factor(0, 0, 10, 0.0) == 1.0 and T.lr_factor(10, 0, 10, 0.0) == pytest.approx(0.0, abs=1e-15)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    for args in [(5, 4), (-1, 4), (0, 0)]:
        with pytest.raises(T.TrainingError): T.warmup_cosine(opt, *args)
    with pytest.raises(T.TrainingError, match="min_lr_ratio"): T.warmup_cosine(opt, 1, 4, 1.5)

# ---------------------------------------------------------------- regularizers

def _pair(dx:float, d:int=2, sigmas=(1.0, 1.0))->SplatRegistry:
    reg = SplatRegistry(SplatConfig(n_heads=1, head_dim=d, level_sizes=(2,)), seed=0)   # capacity 4: two free slots
    with torch.no_grad():
        reg.mu[0].zero_(); reg.mu[0][0, 1, 0] = dx
        reg.log_sigma[0][0, 0] = math.log(sigmas[0]); reg.log_sigma[0][0, 1] = math.log(sigmas[1])
    return reg

def test_bhattacharyya_matches_numerical_integration():
    "BC = ∫ √(p q): checked on a grid in 2-D for two splats of different widths."
    reg = _pair(1.3, d=2, sigmas=(0.7, 1.6))
    xs = torch.linspace(-12, 12, 1201, dtype=torch.float64); X, Y = torch.meshgrid(xs, xs, indexing="ij"); pts = torch.stack([X, Y], -1)
    def pdf(mu, s): return torch.exp(-0.5 * (((pts - mu) / s) ** 2).sum(-1)) / (2 * math.pi * s.prod())
    mu, s = reg.mu[0][0, :2].detach().double(), reg.log_sigma[0][0, :2].detach().double().exp()
    bc = (torch.sqrt(pdf(mu[0], s[0]) * pdf(mu[1], s[1]))).sum() * (xs[1] - xs[0]) ** 2
    assert T.overlap_penalty(reg).item() == pytest.approx(float(bc), rel=1e-4)

def test_overlap_penalty_decreases_when_splats_are_pushed_apart():
    vals = [T.overlap_penalty(_pair(dx)).item() for dx in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert vals[0] == pytest.approx(1.0) and all(a > b for a, b in zip(vals, vals[1:]))
    reg = _pair(0.5); pen = T.overlap_penalty(reg); pen.backward()
    g = reg.mu[0].grad[0, :2, 0]
    assert g[0] > 0 and g[1] < 0   # descent moves splat 0 left and splat 1 right: apart
    with torch.no_grad(): reg.mu[0] -= 0.5 * reg.mu[0].grad
    assert T.overlap_penalty(reg).item() < pen.item()

def test_regularizers_are_scalars_with_gradients_and_ignore_free_slots():
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=4, level_sizes=(3, 2), local_window=4), seed=0)
    with torch.no_grad(): reg.log_amp[0].normal_(); reg.hierarchy.level_logits.normal_()
    for fn in (T.overlap_penalty, T.amplitude_sparsity, T.level_entropy):
        v = fn(reg); assert v.dim() == 0 and v.requires_grad
        reg.zero_grad(); v.backward(); assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())
    amp = lambda: T.amplitude_sparsity(reg).item(); ovl = lambda: T.overlap_penalty(reg).item()
    with torch.no_grad(): live = torch.cat([reg.log_amp[l][reg.buf("alive", l)].exp() for l in range(2)])
    assert amp() == pytest.approx(live.mean().item(), rel=1e-6)
    before = ovl(), amp()
    with torch.no_grad(): reg.mu[0][:, 3:] = reg.mu[0][:, :1]; reg.log_amp[0][:, 3:] = 5.0   # free slots copy a live splat
    assert (ovl(), amp()) == pytest.approx(before)
    w = reg.hierarchy.weights().detach(); assert T.level_entropy(reg).item() == pytest.approx(float(-(w * w.log()).sum()), rel=1e-6)
    with torch.no_grad(): reg.hierarchy.level_logits.zero_()
    assert T.level_entropy(reg).item() == pytest.approx(math.log(3))   # uniform over local, L0, L1

def test_regularization_sums_over_registries_and_rejects_bad_pairs():
    lm = T.TinyHSALM(20, d_model=16, n_layers=2, n_heads=2, max_len=8, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(3,)), seed=0)
    total, terms = T.regularization(lm, {T.level_entropy: 2.0})
    assert terms["level_entropy"] == pytest.approx(0.0) and total.item() == pytest.approx(0.0)
    total, terms = T.regularization(lm, [(T.amplitude_sparsity, 0.5)])
    assert terms["amplitude_sparsity"] == pytest.approx(2.0) and total.item() == pytest.approx(1.0)
    with pytest.raises(T.TrainingError, match="regularizers must be"): T.regularization(lm, [(T.level_entropy, math.nan)])

# ---------------------------------------------------------------- the step

def test_train_step_refuses_non_finite_loss_and_gradients():
    lin = nn.Linear(3, 1); opt = torch.optim.SGD(lin.parameters(), lr=0.1); w0 = lin.weight.detach().clone()
    with pytest.raises(T.TrainingError, match="loss is .* not finite"): T.train_step(lin, None, lambda m, b: m.weight.sum() * math.inf, opt)
    with pytest.raises(T.TrainingError, match="gradient norm is nan"): T.train_step(lin, None, lambda m, b: (m.weight * 0).sqrt().sum(), opt)
    assert torch.equal(lin.weight, w0) and lin.weight.grad is None

def test_train_step_under_accelerate_trains_a_tiny_lm():
    from accelerate import Accelerator
    torch.manual_seed(0); acc = Accelerator(cpu=True)
    lm = T.TinyHSALM(30, d_model=16, n_layers=1, n_heads=2, max_len=16, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(4,)), seed=0)
    opt = torch.optim.AdamW(T.param_groups(lm, lr=1e-2, splat_lr=3e-2)); sched = T.warmup_cosine(opt, 3, 30)
    lm, opt, sched = acc.prepare(lm, opt, sched)
    stream = torch.arange(200) % 7   # a periodic sequence: learnable
    mu0 = T.splat_registries(lm)["blocks.0.attn.registry"].mu[0].detach().clone()
    g = torch.Generator().manual_seed(0)
    hist = [T.train_step(lm, T.sample_windows(stream, 4, 12, g), T.lm_loss, opt, sched, [(T.overlap_penalty, 1e-2)], clip=1.0, accelerator=acc) for _ in range(30)]
    assert hist[-1]["loss"] < hist[0]["loss"] - 1.0
    assert [h["lr"] for h in hist[:3]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert not torch.equal(T.splat_registries(lm)["blocks.0.attn.registry"].mu[0].detach(), mu0)

def test_sample_windows_and_model_input_checks():
    w = T.sample_windows(torch.arange(10), 5, 9, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and (w == torch.arange(10)).all()
    with pytest.raises(T.TrainingError, match="longer than seq_len=10"): T.sample_windows(torch.arange(10), 2, 10)
    lm = T.TinyHSALM(20, d_model=16, n_layers=1, n_heads=2, max_len=8, splats=SplatConfig(n_heads=2, head_dim=8, level_sizes=(2,)))
    with pytest.raises(T.TrainingError, match="0 < seq <= 8"): lm(torch.zeros(1, 9, dtype=torch.long))

# ---------------------------------------------------------------- serialization: exact round trips

def _adapted(seed=0, dtype=torch.float32)->SplatRegistry:
    "A registry after a split, a merge and enough births to grow level 1 (capacities no longer the config's)."
    torch.manual_seed(seed)
    reg = SplatRegistry(SplatConfig(n_heads=2, head_dim=6, level_sizes=(4, 2), rank=2, local_window=3), seed=seed).to(dtype)
    with torch.no_grad(): reg.u[0].normal_(0, 0.2); reg.log_amp[0].normal_(); reg.hierarchy.level_logits.normal_()
    a, b = reg.split(reg.splats(level=0, head=1)[0].id, torch.randn(6))
    reg.merge(a, reg.splats(level=0, head=1)[1].id)   # [0] is `a`, in the slot its parent freed
    parent = reg.splats(level=1, head=0)[0].id
    for _ in range(5): reg.register(1, 0, torch.randn(6), -0.2, parent=-1)
    reg.register(0, 0, torch.randn(6), 0.1, parent=parent)
    reg.unregister(reg.splats(level=0, head=0)[1].id)
    assert reg.capacity(1) > 4
    return reg

def _same(a:nn.Module, b:nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_exact_after_adaptation(tmp_path, dtype):
    reg = _adapted(dtype=dtype)
    back = S.load_splats(S.save_splats(reg, tmp_path/"ck"))
    _same(reg, back)
    assert back.cfg == reg.cfg and [s.id for s in back.splats()] == [s.id for s in reg.splats()]
    assert [(s.id, s.parent) for s in back.splats()] == [(s.id, s.parent) for s in reg.splats()]
    q, k, v = (torch.randn(1, 2, 11, 6, dtype=dtype) for _ in range(3))
    for causal in (False, True):
        lw = reg.hierarchy.log_weight("local")
        o1 = splat_attention(q, k, v, reg.stacked(), causal, local_window=3, log_w_local=lw, chunk=4)[0]
        o2 = splat_attention(q, k, v, back.stacked(), causal, local_window=3, log_w_local=back.hierarchy.log_weight("local"), chunk=4)[0]
        assert torch.equal(o1, o2)
    assert back.register(0, 0, torch.zeros(6), 0.0) == int(reg.next_id)   # fresh ids continue where they stopped

def test_load_into_existing_registry_grows_and_shrinks_levels(tmp_path):
    reg = _adapted()
    target = SplatRegistry(SplatConfig(n_heads=2, head_dim=6, level_sizes=(8, 1), rank=2, local_window=3), seed=9)   # caps 16, 2
    opt = target.attach_optimizer(torch.optim.Adam(target.parameters(), lr=1e-2))
    target.stacked()["log_coef"].exp().sum().backward(); opt.step()   # give it optimizer state
    S.load_splats(S.save_splats(reg, tmp_path/"ck"), into=target)
    _same(reg, target)
    assert [target.capacity(l) for l in range(2)] == [reg.capacity(l) for l in range(2)]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(p) for p in target.parameters()} <= in_opt   # the optimizer follows the resized parameters
    opt.zero_grad(); target.stacked()["log_coef"].exp().sum().backward(); opt.step()   # and can keep stepping

def test_model_round_trip_keyed_by_module_name(tmp_path):
    cfg = SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 2))
    lm = T.TinyHSALM(30, d_model=16, n_layers=3, n_heads=2, max_len=8, splats=cfg, seed=0)
    lm.blocks[2].attn.registry.split(lm.blocks[2].attn.registry.splats(level=0)[0].id, torch.ones(8))
    for _ in range(4): lm.blocks[1].attn.registry.register(1, 1, torch.randn(8), 0.0)
    side = S.save_splats(lm, tmp_path/"lm")
    assert sorted(json.loads(side.read_text())["registries"]) == [f"blocks.{i}.attn.registry" for i in range(3)]
    fresh = T.TinyHSALM(30, d_model=16, n_layers=3, n_heads=2, max_len=8, splats=cfg, seed=7)
    S.load_splats(side, into=fresh)
    for a, b in zip(T.splat_registries(lm).values(), T.splat_registries(fresh).values()): _same(a, b)
    regs = S.load_splats(side)
    assert sorted(regs) == sorted(T.splat_registries(lm)) and all(isinstance(r, SplatRegistry) for r in regs.values())
    ids = torch.randint(0, 30, (2, 8))
    with torch.no_grad(): fresh.load_state_dict({k: v for k, v in lm.state_dict().items() if ".registry." not in k}, strict=False)
    assert torch.equal(fresh(ids), lm(ids))

def test_equal_contents_give_the_same_tensor_file(tmp_path):
    reg = _adapted()
    names = {json.loads(S.save_splats(reg, tmp_path/f"d{i}"/"ck").read_text())["tensor_file"] for i in range(8)}
    assert len(names) == 1

def test_load_does_not_touch_the_global_rng(tmp_path):
    side = S.save_splats(_adapted(), tmp_path/"ck")
    state = torch.get_rng_state(); S.load_splats(side); assert torch.equal(state, torch.get_rng_state())

# ---------------------------------------------------------------- serialization: bad files

def _snapshot(folder:Path)->dict: return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

@pytest.fixture
def saved(tmp_path):
    reg = _adapted(); side = S.save_splats(reg, tmp_path/"ck")
    meta = json.loads(side.read_text())
    return reg, side, tmp_path/meta["tensor_file"], meta

def _fails_cleanly(path, err, match, into=None, verify=True):
    "Loading fails with `err` matching `match`, leaves the target bitwise unchanged and adds no file."
    folder = Path(path).parent; files = _snapshot(folder)
    target = into if into is not None else SplatRegistry(SplatConfig(n_heads=2, head_dim=6, level_sizes=(4, 2), rank=2, local_window=3), seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(err, match=match): S.load_splats(path, into=target, verify=verify)
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert _snapshot(folder) == files

def test_truncated_tensor_file(saved):
    reg, side, tfile, _ = saved
    tfile.write_bytes(tfile.read_bytes()[:-100])
    _fails_cleanly(side, CorruptFileError, r"sha256 is .* the file was changed or truncated")
    _fails_cleanly(side, CorruptFileError, r"ck\..*\.safetensors is not a readable safetensors file", verify=False)

def test_garbage_tensor_file(saved):
    _, side, tfile, meta = saved
    tfile.write_bytes(b"\x00" * 64)
    _fails_cleanly(side, CorruptFileError, "not a readable safetensors file", verify=False)

def test_hash_mismatch_with_a_valid_but_different_file(saved, tmp_path):
    reg, side, tfile, _ = saved
    with torch.no_grad(): reg.mu[0].add_(1e-3)
    other = S.save_splats(reg, tmp_path/"other"); otf = tmp_path/json.loads(other.read_text())["tensor_file"]
    tfile.write_bytes(otf.read_bytes())
    _fails_cleanly(side, CorruptFileError, "the file was changed or truncated")

def test_missing_sidecar_and_missing_tensor_file(saved, tmp_path):
    _, side, tfile, _ = saved
    _fails_cleanly(tmp_path/"nope", S.SplatFileMissingError, r"no splat checkpoint sidecar at .*nope\.json")
    assert issubclass(S.SplatFileMissingError, FileNotFoundError)
    tfile.unlink()
    _fails_cleanly(side, S.SplatFileMissingError, r"names the tensor file .*which does not exist")

def _edit(side:Path, name:str, **kw)->Path:
    p = side.with_name(name); p.write_text(json.dumps(json.loads(side.read_text()) | kw)); return p

def test_newer_format_version_names_both_versions(saved):
    _, side, _, _ = saved
    p = _edit(side, "newer.json", format_version=S.FORMAT_VERSION + 1, registries={"": {"something": "new"}})
    _fails_cleanly(p, S.SplatVersionError, rf"format_version {S.FORMAT_VERSION + 1}; .*reads format_version <= {S.FORMAT_VERSION}")

@pytest.mark.parametrize("kw,match", [
    (dict(format_version="1"), "format_version must be a positive int"),
    (dict(format="something.else"), "is not an hsa_lib splat checkpoint"),
    (dict(tensor_file="../ck.safetensors"), "must be a .safetensors file name in the same folder"),
    (dict(sha256=None), "field 'sha256' is missing"),
    (dict(registries={}), "field 'registries' is empty"),
    (dict(registries={"": {"config": {"n_heads": 2}, "capacities": [1], "next_id": 0, "dtype": "float32"}}), r"registries\[''\]\.capacities must be 3 positive ints"),
    (dict(registries={"": {"config": {"n_heads": "two"}}}), r"registries\[''\]\.config is not a valid SplatConfig"),
])
def test_malformed_sidecar_fields_are_named(saved, kw, match):
    _, side, _, _ = saved
    _fails_cleanly(_edit(side, "bad.json", **kw), CorruptFileError, match)

def test_invalid_json_sidecar(saved):
    _, side, _, _ = saved
    p = side.with_name("broken.json"); p.write_text(side.read_text()[:50])
    _fails_cleanly(p, CorruptFileError, "broken.json is not valid JSON")

def test_sidecar_that_disagrees_with_the_tensors(saved):
    "A sidecar edited by hand (hash still right) describing other capacities or ids is caught by the structure checks."
    _, side, _, meta = saved
    m = meta["registries"][""]
    _fails_cleanly(_edit(side, "caps.json", registries={"": m | {"capacities": [c + 1 for c in m["capacities"]]}}), CorruptFileError, r"tensor 'mu.0' is \(2, 8, 6\) torch.float32, expected \(2, 9, 6\)")
    _fails_cleanly(_edit(side, "ids.json", registries={"": m | {"next_id": 3}}), CorruptFileError, "next_id is")

def test_config_that_does_not_match_the_target(saved):
    _, side, _, _ = saved
    for cfg, match in [(SplatConfig(n_heads=3, head_dim=6, level_sizes=(4, 2), rank=2, local_window=3), "file has n_heads=2, the target has n_heads=3"),
                       (SplatConfig(n_heads=2, head_dim=4, level_sizes=(4, 2), rank=2, local_window=3), "file has head_dim=6, the target has head_dim=4"),
                       (SplatConfig(n_heads=2, head_dim=6, level_sizes=(4, 2), rank=0, local_window=3), "file has rank=2"),
                       (SplatConfig(n_heads=2, head_dim=6, level_sizes=(4, 2, 1), rank=2, local_window=3), "file has 2 levels, the target has 3")]:
        _fails_cleanly(side, S.SplatConfigMismatchError, match, into=SplatRegistry(cfg, seed=0))
    lm = T.TinyHSALM(10, d_model=12, n_layers=2, n_heads=2, max_len=4, splats=SplatConfig(n_heads=2, head_dim=6, level_sizes=(4, 2), rank=2, local_window=3))
    _fails_cleanly(side, S.SplatConfigMismatchError, r"holds registries \[''\], the target has \['blocks.0.attn.registry'", into=lm)

def test_model_load_checks_all_layers_before_changing_any(tmp_path):
    "Layer 1 does not fit: layer 0, which would, must not have been loaded either."
    cfg = SplatConfig(n_heads=2, head_dim=8, level_sizes=(3,))
    src = T.TinyHSALM(10, d_model=16, n_layers=2, n_heads=2, max_len=4, splats=cfg, seed=0)
    side = S.save_splats(src, tmp_path/"m")
    dst = T.TinyHSALM(10, d_model=16, n_layers=2, n_heads=2, max_len=4, splats=cfg, seed=3)
    dst.blocks[1].attn.registry = SplatRegistry(SplatConfig(n_heads=2, head_dim=8, level_sizes=(3, 1)), seed=0)
    _fails_cleanly(side, S.SplatConfigMismatchError, "blocks.1.attn.registry.*1 levels, the target has 2", into=dst)

def test_files_are_safetensors_and_the_code_never_unpickles(saved):
    _, side, tfile, _ = saved
    head = tfile.read_bytes(); n = int.from_bytes(head[:8], "little")
    header = json.loads(head[8:8 + n]); assert header["__metadata__"] == {"format": f"{S.FORMAT_NAME}/{S.FORMAT_VERSION}"}
    src = Path(S.__file__).read_text()
    assert "torch.load(" not in src and "import pickle" not in src

def test_bad_save_targets(tmp_path):
    with pytest.raises(S.SplatSerializationError, match="is a tensor file"): S.save_splats(_adapted(), tmp_path/"x.safetensors")
    with pytest.raises(S.SplatSerializationError, match="contains no SplatRegistry"): S.save_splats(nn.Linear(2, 2), tmp_path/"x")
    with pytest.raises(S.SplatSerializationError, match="bad entries"): S.save_splats({"a": nn.Linear(2, 2)}, tmp_path/"x")
    assert list(tmp_path.iterdir()) == []

# ---------------------------------------------------------------- serialization: atomicity

def test_failed_save_leaves_previous_checkpoint_and_no_temp_files(tmp_path):
    "The final rename fails (a directory sits at the new tensor file's name): nothing half-written remains."
    old, new = _adapted(seed=0), _adapted(seed=1)
    probe = S.save_splats(new, tmp_path/"probe/ck"); name = json.loads(probe.read_text())["tensor_file"]   # content-addressed: same name
    side = S.save_splats(old, tmp_path/"ck"); (tmp_path/name).mkdir()
    files = _snapshot(tmp_path)
    with pytest.raises(OSError): S.save_splats(new, tmp_path/"ck")
    assert _snapshot(tmp_path) == files and not list(tmp_path.glob(".*"))
    _same(old, S.load_splats(side))

CHILD = textwrap.dedent("""
    import os, sys, torch
    from hsa_lib.hsa.splats import SplatConfig, SplatRegistry
    from hsa_lib.hsa.serialization import save_splats
    path, kill_at = sys.argv[1], sys.argv[2]
    reg = SplatRegistry(SplatConfig(n_heads=4, head_dim=64, level_sizes=(256,)), seed=0)
    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_name == kill_at: os.kill(os.getpid(), 9)
    print("ready", flush=True)
    if kill_at != "loop": sys.setprofile(prof)
    for i in range(10**6):
        with torch.no_grad(): reg.log_amp[0].fill_(float(i))
        save_splats(reg, path)
""")

def _killed_writer(tmp_path:Path, kill_at:str, delay:float=0.0)->SplatRegistry:
    "Save version -1, let a child overwrite it and SIGKILL the child; return what loads afterwards."
    reg = SplatRegistry(SplatConfig(n_heads=4, head_dim=64, level_sizes=(256,)), seed=0)
    with torch.no_grad(): reg.log_amp[0].fill_(-1.0)
    side = S.save_splats(reg, tmp_path/"ck")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(side), kill_at], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    if delay: time.sleep(delay); p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=120) == -signal.SIGKILL
    back = S.load_splats(side)
    torch.testing.assert_close(back.mu[0], reg.mu[0], rtol=0, atol=0)
    return back

@pytest.mark.parametrize("kill_at,committed", [("sha256_file", False), ("atomic_write_json", False), ("_fsync_dir", True)])
def test_writer_killed_at_each_stage_leaves_a_loadable_checkpoint(tmp_path, kill_at, committed):
    amp = _killed_writer(tmp_path, kill_at).log_amp[0][0, 0].item()
    assert amp == (0.0 if committed else -1.0)

def test_writer_killed_at_a_random_moment_leaves_a_loadable_checkpoint(tmp_path):
    back = _killed_writer(tmp_path, "loop", delay=1.5)
    a = back.log_amp[0]; assert (a == a[0, 0]).all() and a[0, 0].item().is_integer()   # one whole version, never a mix

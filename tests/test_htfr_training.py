"HTFR training: objectives, two-stage, fit with relocation, checkpoints and their bad inputs."
import pytest, torch
from hsa_lib.core import CorruptFileError
from hsa_lib.htfr.field import HTFR
from hsa_lib.htfr.adapt import random_init
from hsa_lib.htfr.training import TwoStage, fit, save_checkpoint, load_checkpoint, CheckpointMismatchError, objective, kl_per_example

def _data(n=800):
    torch.manual_seed(0); x = torch.rand(n, 3) * 2 - 1; return x, torch.sin(3 * x[:, :1]) * x[:, 1:2] + x[:, 2:]

def test_fit_mse_with_relocations_logs_history():
    x, y = _data(); f = HTFR(3, 1, n=48, k=4, tau=0.3); random_init(f.stack, x, y)
    h = fit(f, x, y, steps=80, relocate_every=20, batch=64)
    assert sum(h["loss"][-10:]) < sum(h["loss"][:10]) and len(h["active"]) == 80 and all(0 < s <= 1 for s in h["top_share"])
    assert all({"moved", "delta", "step"} <= set(r) for r in h["relocations"])

def test_ce_and_kl_objectives_train():
    torch.manual_seed(0); x = torch.randn(400, 4); lab = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    f = HTFR(4, 3, n=32, k=4); random_init(f.stack, x); h = fit(f, x, lab, loss="ce", steps=60, batch=64)
    assert sum(h["loss"][-10:]) < sum(h["loss"][:10])
    t = torch.randn(400, 5) + x[:, :1]; g = HTFR(4, 5, n=32, k=4); random_init(g.stack, x, torch.log_softmax(t, -1))
    h2 = fit(g, x, t, loss="kl", steps=60, batch=64); assert sum(h2["loss"][-10:]) < sum(h2["loss"][:10])
    assert torch.allclose(kl_per_example(t, t), torch.zeros(400), atol=1e-5)
    with pytest.raises(ValueError, match="unknown objective"): objective("l1")
    with pytest.raises(ValueError, match="rows"): fit(f, x, lab[:10], loss="ce", steps=1)

def test_two_stage_gradients_reach_both():
    x, y = _data(); ts = TwoStage(HTFR(3, 2, n=24, k=3), HTFR(2, 1, n=24, k=3)); random_init(ts.compressor.stack, x)
    before = ts.compressor.stack.normal.detach().clone(); fit(ts, x, y, steps=10, batch=32)
    assert not torch.equal(before, ts.compressor.stack.normal.detach())

@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_checkpoint_round_trip(tmp_path, dtype):
    x, y = _data(); f = HTFR(3, 1, n=16, k=3, tau=0.4); random_init(f.stack, x, y)
    g = load_checkpoint(save_checkpoint(f, tmp_path/"c.safetensors", dtype))
    want = torch.float16 if dtype == "fp16" else torch.float32
    assert g.stack.normal.dtype == want and g.config()["tau"] == 0.4
    for k, v in f.state_dict().items(): torch.testing.assert_close(g.state_dict()[k].float(), v.to(want).float())
    ts = TwoStage(HTFR(3, 2, n=8, k=2), HTFR(2, 1, n=8, k=2)); ts2 = load_checkpoint(save_checkpoint(ts, tmp_path/"t.safetensors", dtype))
    assert isinstance(ts2, TwoStage)

def test_checkpoint_mismatches_and_corruption(tmp_path):
    p = save_checkpoint(HTFR(3, 1, n=16, k=3), tmp_path/"c.safetensors", "fp16")
    with pytest.raises(CheckpointMismatchError, match="shape"): load_checkpoint(p, HTFR(3, 1, n=17, k=3, param_dtype=torch.float16))
    with pytest.raises(CheckpointMismatchError, match="shape"): load_checkpoint(p, HTFR(4, 1, n=16, k=3, param_dtype=torch.float16))
    with pytest.raises(CheckpointMismatchError, match="dtype"): load_checkpoint(p, HTFR(3, 1, n=16, k=3))
    assert load_checkpoint(p, HTFR(3, 1, n=16, k=3), cast=True).stack.normal.dtype == torch.float32
    with pytest.raises(CheckpointMismatchError, match="names"): load_checkpoint(p, TwoStage(HTFR(3, 2, n=8, k=2), HTFR(2, 1, n=8, k=2)))
    (tmp_path/"bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CorruptFileError): load_checkpoint(tmp_path/"bad.safetensors")

def test_fit_keeps_an_attached_index_current():
    from hsa_lib.htfr.field import PrefilterIndex
    x, y = _data(); f = HTFR(3, 1, n=32, k=4); random_init(f.stack, x, y); f.index = PrefilterIndex(f.stack, x[:100], rank=3)
    fit(f, x, y, steps=5, batch=32)
    torch.testing.assert_close(f.index.proj, f.stack.unit_normals().detach() @ f.index.basis)

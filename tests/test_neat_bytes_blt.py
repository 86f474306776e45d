"BLT: byte input checks, entropy from the prefix only, patching rules, calibration, the byte latent transformer."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.core import HsaLibError
from hsa_lib.data import corpus_text
from hsa_lib.neat.blt import (BLT, BLTConfig, BLTError, ByteLMConfig, train_byte_lm, to_bytes, byte_entropy, patch_starts, static_starts,
                              calibrate_threshold, mean_patch_len, bits_per_byte, latent_steps, train_blt, next_byte_logprobs)

@pytest.fixture(scope="module")
def lm(): return train_byte_lm(corpus_text("train")[:20000], ByteLMConfig(steps=25, batch=8))

@pytest.fixture(scope="module")
def val(): return to_bytes(corpus_text("val")[:700])

def test_bad_bytes():
    for bad, msg in ((b"abc\xc3", "offset 3"), (b"\xff", "offset 0"), (b"", "empty"), ("", "empty"), (123, "expected str or bytes")):
        with pytest.raises(BLTError, match=msg): to_bytes(bad)
    assert issubclass(BLTError, HsaLibError) and issubclass(BLTError, ValueError)

@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_bytes_round_trip(s): assert bytes(to_bytes(s).tolist()).decode("utf-8") == s

def test_lm_learns(lm): assert lm.losses[-1] < lm.losses[0] - 1.0

@pytest.mark.parametrize("k", [1, 15, 16, 17, 40, 333])
def test_entropy_prefix_only(lm, val, k):
    "Entropy (hence boundaries) of byte t is the same whether or not bytes after t exist — across window seams too."
    H, Hk = byte_entropy(lm, val), byte_entropy(lm, val[:k])
    torch.testing.assert_close(Hk, H[:k], atol=1e-4, rtol=1e-4)
    th = float(H.median())
    assert torch.equal(patch_starts(Hk, th, min_patches=1), patch_starts(H, th)[:k])

def test_suffix_change_keeps_prefix_boundaries(lm, val):
    x2 = val.clone(); x2[300:] = torch.flip(val[300:], [0])
    H, H2 = byte_entropy(lm, val), byte_entropy(lm, x2); th = float(H.median())
    assert torch.equal(patch_starts(H, th)[:301], patch_starts(H2, th)[:301])   # byte 300's entropy only reads bytes < 300

def test_logprobs_normalized(lm, val):
    lp = next_byte_logprobs(lm, val[:100]); torch.testing.assert_close(lp.exp().sum(-1), torch.ones(100))
    with pytest.raises(BLTError): next_byte_logprobs(lm, val[:0])

@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 8, allow_nan=False), min_size=2, max_size=80), st.floats(0, 8), st.floats(-1, 3), st.integers(1, 79))
def test_rules_properties(h, th, thr, k):
    H = torch.tensor(h)
    g = patch_starts(H, th, rule="global", min_patches=1); m = patch_starts(H, theta_r=thr, rule="monotonic", min_patches=1)
    c = patch_starts(H, th, thr, "combined", min_patches=1)
    assert g[0] and m[0] and c[0] and torch.equal(c, g | m)
    k = min(k, len(h))
    assert torch.equal(patch_starts(H[:k], th, thr, "combined", min_patches=1), c[:k])   # prefix only

def test_bad_thresholds():
    H = torch.rand(100)
    with pytest.raises(BLTError, match="give 1 patch"): patch_starts(H, theta=5.0)
    with pytest.raises(BLTError, match="give 1 patch"): patch_starts(H, theta_r=5.0, rule="monotonic")
    with pytest.raises(BLTError, match="theta"): patch_starts(H)
    with pytest.raises(BLTError, match="theta_r"): patch_starts(H, theta=0.5, rule="combined")
    with pytest.raises(BLTError, match="finite"): patch_starts(H, theta=float("nan"))
    with pytest.raises(BLTError, match="unknown patching rule"): patch_starts(H, 0.5, rule="dynamic")
    with pytest.raises(BLTError, match="finite non-empty"): patch_starts(torch.tensor([1.0, float("inf")]), 0.5)
    with pytest.raises(BLTError, match="patch_len"): static_starts(10, 0)

@pytest.mark.parametrize("rule", ["global", "monotonic"])
def test_calibration(rule):
    H = torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 6
    th = calibrate_threshold(H, 4.0, rule)
    kw = dict(theta=th) if rule == "global" else dict(theta_r=th)
    assert abs(mean_patch_len(patch_starts(H, rule=rule, **kw)) - 4.0) < 0.05
    with pytest.raises(BLTError, match="target mean"): calibrate_threshold(H, 0.5)
    with pytest.raises(BLTError, match="theta_r"): calibrate_threshold(H, 4.0, "combined")

def test_blt_causal_and_checks():
    torch.manual_seed(0); m = BLT(BLTConfig()).eval(); x = torch.randint(0, 256, (2, 48)); s = static_starts(48, 4)[None].expand(2, -1).clone()
    s[1, 5] = True; y = m(x, s)
    for k in (0, 7, 30, 47):
        x2 = x.clone(); x2[:, k] = (x2[:, k] + 1) % 256
        torch.testing.assert_close(m(x2, s)[:, :k + 1], y[:, :k + 1])
    with pytest.raises(BLTError, match="byte 0"): m(x, torch.zeros_like(s))
    with pytest.raises(BLTError, match="same shape"): m(x, s[:, :10])
    with pytest.raises(BLTError, match="exceeds max_len"): m(torch.randint(0, 256, (1, 80)), torch.ones(1, 80, dtype=torch.bool))

def test_blt_trains_and_bpb(lm):
    x = to_bytes(corpus_text("train")[:6000]); H = byte_entropy(lm, x); th = calibrate_threshold(H, 4.0); s = patch_starts(H, th)
    m = train_blt(x, s, steps=15); assert m.losses[-1] < m.losses[0]
    bpb = bits_per_byte(m, x[:1024], s[:1024]); assert 0 < bpb < 9
    assert 3.0 < 1024 / latent_steps(s[:1024]) <= 4.5
    with pytest.raises(BLTError, match="at least 64"): bits_per_byte(m, x[:10], s[:10])
    with pytest.raises(BLTError, match="do not match"): train_blt(x, s[:-1], steps=1)

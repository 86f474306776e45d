"LSM readouts: every configured window builds, the wave buffer is causal, the losses decode."
import itertools
import pytest, torch
from hypothesis import given, settings, strategies as st
from hsa_lib.lsm.reservoir import LSMError
from hsa_lib.lsm.cnn import CNN2DReadout, CNN3DReadout, wave_windows, nearest_embedding_logits, embedding_ce_loss, cosine_loss, mse_loss
from hsa_lib.lsm.system import SystemAwareReadout

GRID = list(itertools.product([1, 2, 4], [1, 2, 3, 5], [1, 3, 8, 32], [1, 10, 100]))

@pytest.mark.parametrize("layers,slices,window,units", GRID)
def test_shapes_build_for_every_config(layers, slices, window, units):
    states = torch.randn(2, 6, layers * units)
    img = wave_windows(states, layers, window)
    assert img.shape == (2, 6, layers, window, units)
    flat = img.reshape(-1, layers, window, units)
    assert CNN2DReadout(layers, 7, channels=4)(flat).shape == (12, 7)
    assert CNN3DReadout(layers, 7, channels=4)(torch.stack([flat] * slices, 2)).shape == (12, 7)
    if slices >= 2: assert SystemAwareReadout(layers, units, 7, 5, slices, channels=4)(flat, torch.randn(12, 5)).shape == (12, 7)

@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 11), window=st.integers(1, 6))
def test_wave_buffer_is_causal(t, window):
    s = torch.randn(1, 12, 8); s2 = s.clone(); s2[:, t + 1:] = 99.0
    assert torch.equal(wave_windows(s, 2, window)[:, t], wave_windows(s2, 2, window)[:, t])

def test_bad_shapes_name_the_problem():
    with pytest.raises(LSMError, match="divisible"): wave_windows(torch.zeros(1, 3, 10), 3, 2)
    with pytest.raises(LSMError, match="window"): wave_windows(torch.zeros(1, 3, 10), 1, 0)
    with pytest.raises(LSMError, match=r"expected \[N 2"): CNN2DReadout(2, 3)(torch.zeros(1, 1, 3, 3))
    with pytest.raises(LSMError, match="temperature"): nearest_embedding_logits(torch.zeros(1, 3), torch.zeros(5, 3), 0.0)
    with pytest.raises(LSMError, match="dim"): nearest_embedding_logits(torch.zeros(1, 4), torch.zeros(5, 3))

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 40), d=st.integers(1, 16))
def test_nearest_embedding_decodes_exact_embeddings(seed, V, d):
    g = torch.Generator().manual_seed(seed); E = torch.randn(V, d, generator=g, dtype=torch.float64)
    i = torch.randint(V, (5,), generator=g)
    expect = torch.cdist(E[i], E).argmin(-1)  # E[i] itself, or an identical row
    assert torch.equal(nearest_embedding_logits(E[i], E).argmax(-1), expect)

def test_losses():
    E = torch.randn(10, 4); y = torch.tensor([1, 2])
    assert cosine_loss(E[y], E[y]).item() < 1e-6 and mse_loss(E[y], E[y]).item() == 0
    assert embedding_ce_loss(5 * E[y], 5 * E, y) < embedding_ce_loss(5 * E[[2, 1]], 5 * E, y)

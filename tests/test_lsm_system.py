"LSM system messages: validation, and two system prompts steer a trained 3D CNN in opposite directions."
import pytest, torch
from hsa_lib.core import set_seed
from hsa_lib.lsm.reservoir import LSMError
from hsa_lib.lsm.embedding import StandardTokenizerWrapper, SinusoidalEmbedder
from hsa_lib.lsm.system import SystemMessageProcessor, EmbeddingModifierGenerator, SystemAwareReadout

@pytest.fixture(scope="module")
def smp():
    tok = StandardTokenizerWrapper(); emb = SinusoidalEmbedder(tok.vocab_size, 16, seed=0)
    return SystemMessageProcessor(tok, lambda ids: emb(torch.tensor(ids)), max_tokens=32)

def test_validation(smp):
    assert smp.validate({"role": "system", "content": " Be brief. "}) == "Be brief."
    with pytest.raises(LSMError, match="empty"): smp.validate("   ")
    with pytest.raises(LSMError, match="'assistant'"): smp.validate({"role": "assistant", "content": "x"})
    with pytest.raises(LSMError, match=r"\|end\|"): smp.validate("stop |end| here")
    with pytest.raises(LSMError, match="max_tokens=32"): smp.validate("word " * 100)
    with pytest.raises(LSMError, match="int"): smp.validate(7)

def test_identity_modifiers_at_init():
    m, a = EmbeddingModifierGenerator(8, 12, slices=3)(torch.randn(4, 8))
    assert m.shape == a.shape == (4, 3, 12) and torch.allclose(m, torch.ones_like(m)) and torch.allclose(a, torch.zeros_like(a))

def test_two_system_prompts_steer_in_the_intended_direction(smp):
    set_seed(0)
    pos, neg = smp.embed("Answer positively."), smp.embed("Answer negatively.")
    v = torch.randn(8); v = v / v.norm(); imgs = torch.randn(64, 1, 4, 20)
    model = SystemAwareReadout(1, 20, 8, 16, slices=2, channels=8); opt = torch.optim.Adam(model.parameters(), 3e-3)
    S = torch.cat([pos.expand(32, -1), neg.expand(32, -1)]); Y = torch.cat([v.expand(32, -1), -v.expand(32, -1)])
    for _ in range(150):
        loss = (model(imgs, S) - Y).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    test = torch.randn(32, 1, 4, 20)
    p_pos, p_neg = (model(test, s.expand(32, -1)) @ v for s in (pos, neg))
    assert (p_pos > p_neg).all() and p_pos.mean() > 0 > p_neg.mean()

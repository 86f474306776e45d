"hsa-chat on the real SmolLM2: streaming, attention modes, commands, compare, bad input, Ctrl-C."
import io, sys
import pytest, torch
from conftest import ROOT, run
from hsa_lib.models import load_model, ModelNotFoundError
from hsa_lib.hsa.integration import detach_hsa, hsa_layers
from hsa_lib.hsa.calibration import save_calibration, CalibrationError
from hsa_lib.apps.chat import ChatSession, ChatError, chat_loop, setup_attention, load_chat_model, main

@pytest.fixture(scope="module")
def smol():
    m, tok = load_model(); yield m, tok
    detach_hsa(m)

def test_dense_reply_streams_and_answers(smol):
    m, tok = smol; detach_hsa(m); out = io.StringIO()
    s = ChatSession(m, tok, max_new_tokens=12, out=out)
    ans = s.reply("What is the capital of France?")
    assert "Paris" in ans and out.getvalue().strip() == ans
    assert [x["role"] for x in s.messages] == ["user", "assistant"]

def test_hybrid_session_commands_and_splats(smol, tmp_path):
    m, tok = smol
    setup_attention(m, tok, "hybrid", window=32, calib_tokens=64, transfer_steps=2)
    assert len(hsa_layers(m)) == m.config.num_hidden_layers and m.config._attn_implementation == "hsa"
    out = io.StringIO(); s = ChatSession(m, tok, max_new_tokens=6, out=out)
    assert chat_loop(s, ["Hello!", "/splats", "/bogus", "/reset", "/quit", "never read"], out=out) == 0
    text = out.getvalue()
    assert "assistant> " in text and "layer 0 head 0: splat" in text and "unknown command '/bogus'" in text and "[conversation cleared]" in text
    assert s.messages == []
    layers = hsa_layers(m).values()
    assert not any(l.record for l in layers)                                        # recording is on only during a reply
    u = next(iter(layers)).last_usage; assert u is not None and torch.isfinite(u).all() and (u >= 0).all()
    mon = s.monitor(max_layers=3)
    assert [r["layer"] for r in mon] == [0, 1, 2] and all(r["problems"] == [] and 0 <= r["heads_on"] <= r["heads"] for r in mon)
    assert all(r["effective"] is not None and len(r["effective"]) == r["heads"] for r in mon)
    save_calibration(m, tmp_path/"smol", "smollm2-135m-instruct")
    detach_hsa(m); setup_attention(m, tok, "hybrid", splats=str(tmp_path/"smol"))
    assert len(hsa_layers(m)) == m.config.num_hidden_layers

def test_compare_and_limits(smol):
    m, tok = smol; dm, _ = load_model()
    if not hsa_layers(m): setup_attention(m, tok, "hybrid", window=32, calib_tokens=64)
    out = io.StringIO(); a, d = ChatSession(m, tok, 4, out=out), ChatSession(dm, tok, 4, out=out)
    chat_loop(a, ["Name a fruit."], compare=d, out=out)
    assert "dense> " in out.getvalue() and "hsa> " in out.getvalue()
    out2 = io.StringIO(); chat_loop(ChatSession(m, tok, 8, out=out2), ["word " * 9000], out=out2)
    assert "exceeds the model's limit of 8192" in out2.getvalue()

def test_ctrl_c_at_prompt_ends_cleanly(smol):
    m, tok = smol
    def lines():
        yield "/reset"; raise KeyboardInterrupt
    assert chat_loop(ChatSession(m, tok, 4, out=io.StringIO()), lines(), out=io.StringIO()) == 0

def test_bad_input(tmp_path, capsys):
    with pytest.raises(ModelNotFoundError, match="neither a known model"): load_chat_model(str(tmp_path/"nothing"))
    assert main(["--model", str(tmp_path/"nothing")]) == 2 and "neither a known model" in capsys.readouterr().err
    with pytest.raises(ChatError, match="unknown attention"): setup_attention(None, None, "performer")

def test_cli_from_stdin():
    import os, subprocess
    r = subprocess.run([sys.executable, "-m", "hsa_lib.apps.chat", "--attention", "dense", "--max-new-tokens", "8"], cwd=ROOT, input="What is 2 plus 2?\n/reset\n/quit\n",
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "assistant> " in r.stdout and "[conversation cleared]" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hsa_lib.apps.chat", "--splats", "/no/such/file", "--max-new-tokens", "4"], cwd=ROOT, input="",
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "no calibration metadata" in r.stderr

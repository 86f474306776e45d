"hsa-train end to end: same budget for every variant, JSONL metrics, checkpoints, Ctrl-C and resume, bad input."
import json, math, os, signal, subprocess, sys, time
import pytest
from conftest import ROOT, run
from hsa_lib.apps.train import main, run as train_run, TrainConfig, VARIANTS
from hsa_lib.core import ConfigError

FAST = ["--steps", "3", "--eval-batches", "1", "--eval-len", "64", "--seq-len", "32", "--batch-size", "4"]

def test_all_variants_same_budget(tmp_path):
    assert main(FAST + ["--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path/"summary.json").read_text())
    assert set(s["results"]) == set(VARIANTS)
    for v, r in s["results"].items():
        assert math.isfinite(r["val_ppl"]) and r["val_ppl"] > 1
        rows = [json.loads(l) for l in (tmp_path/v/"metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and "val_ppl" in rows[-1]
        assert (tmp_path/v/"checkpoint"/"model.safetensors").exists()
    assert s["results"]["dense"]["params"] < s["results"]["hsa"]["params"]   # the splats are parameters too
    assert not list(tmp_path.glob("*/.ckpt.*"))
    assert main(FAST + ["--out", str(tmp_path), "--resume"]) == 0   # resuming a finished run trains nothing more
    again = json.loads((tmp_path/"summary.json").read_text())["results"]["dense"]
    assert again["val_ppl"] == s["results"]["dense"]["val_ppl"] and again["final_loss"] is None

def test_reproducible(tmp_path):
    cfg = TrainConfig(variants=("hybrid",), steps=2, eval_batches=1, eval_len=64, seq_len=32, batch_size=4)
    a, b = train_run(cfg, tmp_path/"a"), train_run(cfg, tmp_path/"b")
    assert a["hybrid"]["val_ppl"] == b["hybrid"]["val_ppl"]

def test_config_file_and_bad_input(tmp_path, capsys):
    (tmp_path/"c.json").write_text(json.dumps({"variants": ["dense"], "steps": 2, "eval_batches": 1, "eval_len": 64, "seq_len": 32, "batch_size": 4}))
    assert main(["--config", str(tmp_path/"c.json"), "--out", str(tmp_path/"o")]) == 0
    assert list(json.loads((tmp_path/"o"/"summary.json").read_text())["results"]) == ["dense"]
    assert main(["--config", str(tmp_path/"missing.json"), "--out", str(tmp_path/"o")]) == 2
    (tmp_path/"bad.json").write_text(json.dumps({"stepz": 3}))
    assert main(["--config", str(tmp_path/"bad.json"), "--out", str(tmp_path/"o")]) == 2
    assert "stepz" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown variant"): TrainConfig(variants=("performer",))

def test_ctrl_c_then_resume_matches_uninterrupted(tmp_path):
    args = ["--variants", "dense", "--steps", "600", "--eval-batches", "1", "--eval-len", "32", "--seq-len", "16", "--batch-size", "2", "--d-model", "32", "--n-layers", "1"]
    out = tmp_path/"run"; env = {**os.environ, "OMP_NUM_THREADS": "1", "HSA_LIB_PROGRESS": "0"}
    p = subprocess.Popen([sys.executable, "-m", "hsa_lib.apps.train", *args, "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    m = out/"dense"/"metrics.jsonl"; t0 = time.time()
    while (not m.exists() or not m.read_text().strip()) and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.02)   # interrupt as soon as training runs
    p.send_signal(signal.SIGINT); _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err, f"exit {p.returncode} (0 = all 600 steps ran before the interrupt)\n{err[-2000:]}"
    step = json.loads((out/"dense"/"checkpoint"/"state.json").read_text())["step"]
    assert 0 < step < 600
    cli = [sys.executable, "-m", "hsa_lib.apps.train", *args]                     # same process set-up (1 thread) as the interrupted run: bit-comparable
    for extra in (["--out", str(out), "--resume"], ["--out", str(tmp_path/"straight")]):
        r = subprocess.run(cli + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600); assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((out/"summary.json").read_text())["results"]["dense"]["val_ppl"]
    want = json.loads((tmp_path/"straight"/"summary.json").read_text())["results"]["dense"]["val_ppl"]
    assert got == pytest.approx(want, rel=1e-5)

def test_two_processes_gloo(tmp_path):
    "`torchrun` with 2 CPU processes: both ranks train (gradients all-reduced over gloo), rank 0 alone writes the results."
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = ["--variants", "hybrid", "--steps", "3", "--eval-batches", "1", "--eval-len", "32", "--seq-len", "16", "--batch-size", "2",
            "--d-model", "32", "--n-layers", "1", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HSA_LIB_PROGRESS": "0"}
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hsa_lib.apps.train", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path/"summary.json").read_text())["results"]["hybrid"]
    assert r["steps_per_rank"] == [3, 3]                                  # both ranks ran every step
    rows = [json.loads(l) for l in (tmp_path/"hybrid"/"metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss" in x] == [1, 2, 3] and len(rows) == 4   # one writer: no step logged twice
    assert p.stdout.count("val_ppl=") == 1                                # one rank prints the result
    assert not list(tmp_path.glob("*/.ckpt.*")) and (tmp_path/"hybrid"/"checkpoint"/"model.safetensors").exists()

"hsa-neat: train -> eval from disk, bad input exit codes, ablate without the part-2 module, the bench registry."
import json, sys
from conftest import run
from hsa_lib.apps.neat import main

def test_train_then_eval_in_process(tmp_path, capsys):
    assert main(["train", "--model", "swa", "--task", "math", "--steps", "3", "--seq-len", "24", "--window", "8", "--out", str(tmp_path/"r")]) == 0
    assert (tmp_path/"r"/"model.safetensors").exists() and json.loads((tmp_path/"r"/"config.json").read_text())["model"] == "swa"
    capsys.readouterr(); assert main(["eval", str(tmp_path/"r"), "--n", "16"]) == 0
    out = json.loads(capsys.readouterr().out); assert {"acc_in_distribution", "acc_shifted"} <= set(out)

def test_bad_input_exit_codes(tmp_path, capsys):
    assert main(["eval", str(tmp_path/"missing")]) == 2
    assert main(["train", "--window", "999", "--out", str(tmp_path/"x")]) == 2
    (tmp_path/"c").mkdir(); (tmp_path/"c"/"config.json").write_text(json.dumps({"model": "titans", "bogus": 1}))
    assert main(["eval", str(tmp_path/"c")]) == 2
    assert "bogus" in capsys.readouterr().err

def test_corrupt_weights(tmp_path):
    assert main(["train", "--model", "titans", "--steps", "1", "--out", str(tmp_path/"r")]) == 0
    (tmp_path/"r"/"model.safetensors").write_bytes(b"junk")
    assert main(["eval", str(tmp_path/"r")]) == 2

def test_ablate_without_part_two_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hsa_lib.neat.ablation", None)  # makes `import hsa_lib.neat.ablation` raise ImportError
    assert main(["ablate"]) == 2 and "ablation module is not available" in capsys.readouterr().err

def test_ablate_delegates_to_part_two():
    import pytest
    with pytest.raises(SystemExit) as e: main(["ablate", "--help"])
    assert e.value.code == 0

def test_module_runs_as_script(tmp_path):
    r = run([sys.executable, "-m", "hsa_lib.apps.neat", "train", "--model", "baseline", "--task", "mqar", "--steps", "2", "--out", str(tmp_path/"r")])
    assert json.loads(r.stdout)["out"].endswith("r")

def test_benchmark_is_registered_with_its_figures():
    from hsa_lib.bench import BENCHMARKS, discover_benchmarks
    assert "neat-memory" in discover_benchmarks()
    import inspect; src = inspect.getsource(BENCHMARKS["neat-memory"])
    for name in ("titans_mqar_acc_beyond_window", "swa_mqar_acc_beyond_window", "titans_frozen_acc_beyond_window", "svf_minus_lora_acc", "svf_param_ratio", "cem_gain_unseen", "math_shift_gap"):
        assert name in src

"The hsa-bench console script writes a report tooling can read, and refuses unknown subsystems clearly."
import json
from conftest import run, tool

def test_hsa_bench_core_writes_a_valid_report(tmp_path):
    out = tmp_path/"out.json"
    r = run([tool("hsa-bench"), "core", "--quick", "--json", str(out)])
    rep = json.loads(out.read_text())
    assert json.loads(r.stdout) == rep
    assert rep["subsystem"] == "core" and {"torch", "torch_threads", "cpu"} <= set(rep["env"])
    for name in ["harness_null_ratio", "matmul_bf16_over_fp32", "memory_probe_64mib"]:
        f = rep["figures"][name]
        assert {"value", "unit", "baseline", "ratio"} <= set(f) and f["ratio"] == f["value"] / f["baseline"]
    assert 0.2 < rep["figures"]["memory_probe_64mib"]["ratio"] < 5  # the probe sees the allocation (64 MiB) at all

def test_hsa_bench_unknown_subsystem(tmp_path):
    r = run([tool("hsa-bench"), "warp-drive"], check=False)
    assert r.returncode == 2 and "unknown subsystem 'warp-drive'; registered: core" in r.stderr
    assert not (tmp_path/"out.json").exists()

def test_python_m_sees_every_subsystem():
    "`python -m hsa_lib.bench` runs the imported module, so the subsystems it discovers are the ones it looks up."
    import sys
    r = run([sys.executable, "-m", "hsa_lib.bench", "warp-drive"], check=False)
    assert r.returncode == 2 and all(s in r.stderr for s in ("hsa-models", "htfr", "lenses", "lsm", "neat-memory"))

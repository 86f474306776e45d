"Unified model switches, T² on the latent, the parameter-matched baseline, `hsa-neat ablate` and the neat-bytes benchmark registration."
import json
import pytest, torch
from hsa_lib.core import ConfigError
from hsa_lib.bench import discover_benchmarks, BENCHMARKS
from hsa_lib.neat.baseline import count_params
from hsa_lib.neat.transformer2 import adapter_params
from hsa_lib.neat.blt import BLTError, to_bytes
from hsa_lib.neat.unified import UnifiedConfig, build_unified, make_starts, t2_adapt, t2_targets, ByteBaseline
from hsa_lib.neat.ablation import ablate_main, AblationSettings, ci95, row_config, ROWS

def test_config_checks():
    with pytest.raises(ConfigError, match="t2_blocks"): UnifiedConfig(t2_blocks=(5,))
    with pytest.raises(ConfigError, match="patch_len"): UnifiedConfig(patch_len=0.5)
    with pytest.raises(ConfigError, match="unknown ablation row"): row_config("-moe")
    assert UnifiedConfig.from_json(UnifiedConfig(titans=False).to_json()) == UnifiedConfig(titans=False)
    with pytest.raises(BLTError, match="entropy model"): make_starts(UnifiedConfig(), None, to_bytes("abc"))
    assert make_starts(UnifiedConfig(blt=False), None, to_bytes("abc"))[0].all()

@pytest.mark.parametrize("titans", [True, False])
def test_unified_causal(titans):
    m = build_unified(UnifiedConfig(titans=titans)).eval(); x = torch.randint(0, 256, (2, 64)); s = torch.zeros_like(x, dtype=torch.bool); s[:, ::3] = True
    y = m(x, s)
    for k in (5, 33, 63):
        x2 = x.clone(); x2[:, k] = (x2[:, k] + 7) % 256
        torch.testing.assert_close(m(x2, s)[:, :k + 1], y[:, :k + 1])
    assert (type(m.latent.blocks[0]).__name__ == "MACBlock") == titans

def test_memory_reset_per_sequence():
    "Titans memory is written inside each sequence: a batch row's output does not depend on the other rows."
    m = build_unified().eval(); x = torch.randint(0, 256, (3, 64)); s = torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(m(x, s)[1:2], m(x[1:2], s[1:2]), atol=1e-5, rtol=1e-4)

def test_t2_only_z():
    m = build_unified(); names = t2_targets(m); assert names and all(n.startswith("latent.blocks.1.") for n in names)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = to_bytes("abcabc " * 60); s = torch.ones(len(x), dtype=torch.bool)
    t2_adapt(m, x, s, steps=3)
    sd = m.state_dict()
    for k, v in before.items():
        k2 = k if k in sd else k.replace(".weight", ".base.weight")
        torch.testing.assert_close(sd[k2], v)                          # no base weight changed
    assert sum(p.numel() for p in adapter_params(m)) < 0.05 * count_params(m)

def test_baseline_matched():
    n = count_params(build_unified()); b = ByteBaseline(n)
    assert abs(count_params(b) - n) / n < 0.1
    x = torch.randint(0, 256, (1, 20)); y = b(x); x2 = x.clone(); x2[0, 10] = 0 if x[0, 10] else 1
    torch.testing.assert_close(b(x2)[0, :11], y[0, :11])

def test_ci95():
    m, h = ci95([1.0, 2.0, 3.0]); assert m == 2.0 and abs(h - 4.303 / 3 ** 0.5) < 1e-6

def test_ablate_main(tmp_path):
    cfg = tmp_path / "tiny.json"; out = tmp_path / "out.json"; html = tmp_path / "plot.html"
    AblationSettings(lm_steps=4, steps=2, t2_steps=2, mqar_steps=2, grid_steps=2, grid_sizes=(3,), train_bytes=6000, eval_bytes=512).to_json(cfg)
    assert ablate_main(["--config", str(cfg), "--seeds", "2", "--metrics", "bpb,mqar_acc", "--json", str(out), "--html", str(html)]) == 0
    res = json.loads(out.read_text()); assert [t["row"] for t in res["table"]] == list(ROWS) and len(res["per_seed"]) == 2
    assert html.read_text().count("plotly") > 0
    with pytest.raises(SystemExit): ablate_main(["--seeds", "0"])
    with pytest.raises(ConfigError, match="unknown metrics"): ablate_main(["--config", str(cfg), "--seeds", "1", "--metrics", "speed"])

def test_bench_registered():
    assert "neat-bytes" in discover_benchmarks() and BENCHMARKS["neat-bytes"].__module__ == "hsa_lib.neat.bench_bytes"

def test_hsa_neat_ablate_dispatch(capsys):
    "`hsa-neat ablate ...` reaches ablate_main (the CLI module is NEAT part 1's)."
    from hsa_lib.apps.neat import main
    with pytest.raises(SystemExit) as e: main(["ablate", "--help"])
    assert e.value.code == 0 and "parameter-matched baseline" in capsys.readouterr().out

@pytest.mark.parametrize("use_mvot", [True, False])
def test_grid_accuracy_runs(use_mvot):
    from hsa_lib.neat.unified import grid_accuracy
    from hsa_lib.neat.mvot import MVoTConfig
    a = grid_accuracy(UnifiedConfig(mvot=use_mvot), 0, MVoTConfig(steps=2, batch=4, sizes=(3,)), n_eval=4, n_calib=4)
    assert a in (0.0, 0.25, 0.5, 0.75, 1.0)

"Shared pytest set-up: offline Hub, quiet progress bars, the repository root, and the `slow` marker."
import os, shutil, subprocess, sys
from pathlib import Path
import pytest

# Tests never contact the Hugging Face Hub; loaders must fall back to what is local or shipped.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HSA_LIB_PROGRESS", "0")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s (real model, docs build); deselect with -m 'not slow'")
    if not config.option.durations: config.option.durations = 15
    if config.option.reportchars in ("fE", None, ""): config.option.reportchars = "fEsxX"

@pytest.fixture(scope="session")
def root() -> Path: return ROOT

def run(cmd, cwd=ROOT, timeout=1800, env=None, check=True):
    "Run a command (list), returning the CompletedProcess; on failure show its output in the assertion."
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check: assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}\n--- stdout\n{r.stdout[-5000:]}\n--- stderr\n{r.stderr[-5000:]}"
    return r

def tool(name: str) -> str:
    "Path of a console script installed beside this Python (the venv's bin)."
    p = BIN/name
    return str(p) if p.exists() else (shutil.which(name) or name)

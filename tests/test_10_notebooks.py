"The notebooks' own tests, run the way a contributor runs them: nbdev_test --n_workers 2 (cells flagged slow skipped)."
import re
from conftest import ROOT, run, tool

def test_notebooks():
    r = run([tool("nbdev_test"), "--n_workers", "2", "--timing"], check=False, timeout=3000)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Success" in out, f"nbdev_test failed:\n{out[-8000:]}"
    print(out[-3000:])

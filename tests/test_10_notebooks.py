"The notebooks' own tests, run the way a contributor runs them: nbdev_test --n_workers 2 (cells flagged slow skipped)."
import os
from conftest import ROOT, run, tool

def test_notebooks():
    # two notebooks at once, each with its share of the CPUs (torch's default threads per process would thrash 2 cores)
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))
    r = run([tool("nbdev_test"), "--n_workers", "2", "--timing"], check=False, timeout=3000, env={"OMP_NUM_THREADS": threads})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Success" in out, f"nbdev_test failed:\n{out[-8000:]}"
    print(out[-3000:])

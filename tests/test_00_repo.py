"The repository is consistent: the package is what the notebooks export, notebooks are clean, README follows index.ipynb."
import shutil, filecmp
from pathlib import Path
import pytest
from conftest import ROOT, run, tool

def _diff(a: Path, b: Path) -> list:
    "Relative paths that differ between two trees (ignoring caches)."
    out, cmp = [], filecmp.dircmp(a, b, ignore=["__pycache__", ".ipynb_checkpoints"])
    def walk(c, rel=Path()):
        out.extend(str(rel/f) for f in c.left_only + c.right_only + c.diff_files + c.funny_files)
        for name, sub in c.subdirs.items(): walk(sub, rel/name)
    walk(cmp); return out

@pytest.fixture
def scratch(tmp_path):
    "A copy of what nbdev reads and writes: notebooks, settings, the package, the site config."
    for name in ["nbs", "hsa_lib"]: shutil.copytree(ROOT/name, tmp_path/name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ["settings.ini", "_quarto.yml", "setup.py", "README.md"]: shutil.copy2(ROOT/name, tmp_path/name)
    run(["git", "init", "-q", "."], cwd=tmp_path)
    return tmp_path

def test_nbdev_export_leaves_no_diff(scratch):
    run([tool("nbdev_export")], cwd=scratch)
    assert _diff(ROOT/"hsa_lib", scratch/"hsa_lib") == [], "hsa_lib/ differs from what the notebooks export: run nbdev_export"

def test_nbdev_clean_leaves_no_diff(scratch):
    run([tool("nbdev_clean")], cwd=scratch)
    assert _diff(ROOT/"nbs", scratch/"nbs") == [], "notebooks are not clean: run nbdev_clean"

def test_readme_is_generated_from_index():
    from hsa_lib.apps.readme import render_readme
    assert (ROOT/"README.md").read_text(encoding="utf-8") == render_readme(ROOT/"nbs"/"index.ipynb"), "README.md is stale: python -m hsa_lib.apps.readme"

def test_readme_first_block_has_the_two_commands():
    text = (ROOT/"README.md").read_text(encoding="utf-8")
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    cmds = [l.split("#")[0].strip() for l in block.strip().splitlines() if l.strip()]
    assert len(cmds) == 2 and all(c.startswith("bash .ci/setup && ") for c in cmds), cmds
    ci = (ROOT/".ci"/"run").read_text()
    assert cmds[1] in ci, f"CI does not run the README's test command {cmds[1]!r}"

def test_every_notebook_exports_to_its_folder():
    "One notebook = one module, in the folder of its subsystem (nbs/hsa/12_x.ipynb -> hsa_lib/hsa/x.py)."
    import json, re
    for nb in sorted((ROOT/"nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts or nb.name == "index.ipynb": continue
        src = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", src, re.M)
        assert m, f"{nb} has no default_exp"
        folder = nb.parent.relative_to(ROOT/"nbs").parts
        assert tuple(m.group(1).split(".")[:-1]) == folder, f"{nb}: exports {m.group(1)} but lives in nbs/{'/'.join(folder)}"

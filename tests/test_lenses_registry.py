"Pack registry (MAP): formats and schemas, the local store, and real `huggingface_hub` calls against the loopback Hub: round trip, status, attacks (traversal, pickle, tampering), an interrupted download, a corrupt record and concurrent pulls."
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from hypothesis import given, settings, strategies as st

from safetensors.torch import load_file, save_file
from hsa_lib.core import sha256_file
from hsa_lib.lenses.concepts import PROMPT_KEYS
from hsa_lib.lenses.hubserver import HubServer
from hsa_lib.lenses.registry import (CONCEPT_PACK_SCHEMA, HIERARCHY_SCHEMA, LENS_PACK_SCHEMA, LENSES_SCHEMA, PROMPTS_SCHEMA, REGISTRY_SCHEMA,
                                     PackError, PackIntegrityError, PackNotFoundError, PackSchemaError, PackSecurityError, PackStore,
                                     RegistryCorruptError, check_relpath, pack_main, random_lens_pack, stack_classifiers, validate_pack, validate_schema,
                                     write_concept_pack, write_lens_pack)

TREE = {"Entity": ["Animal", "Object"], "Animal": ["Dog", "Cat"], "Emotion": ["Joy", "Fear"]}
CONCEPTS = ["Entity", "Animal", "Object", "Emotion", "Dog", "Cat", "Joy", "Fear"]
_DRIVER = ("import sys, json, io, contextlib\nfrom hsa_lib.lenses.registry import pack_main\nres = []\n"
           "for argv in json.loads(sys.argv[1]):\n"
           "    o, e = io.StringIO(), io.StringIO()\n"
           "    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): rc = pack_main(argv)\n"
           "    res.append({'rc': rc, 'out': o.getvalue(), 'err': e.getvalue()})\n"
           "print('@@' + json.dumps(res))\n")


def hub_env(url):
    return {**os.environ, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HSA_LIB_PROGRESS": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def cli(url, *calls, popen=False):
    "Run several `pack_main(argv)` calls in one fresh Python pointed at the loopback Hub (huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import)."
    args = [sys.executable, "-c", _DRIVER, json.dumps([list(map(str, c)) for c in calls])]
    if popen: return subprocess.Popen(args, env=hub_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(args, env=hub_env(url), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return _parse(r.stdout)


def _parse(stdout):
    res = json.loads(stdout.split("@@")[-1])
    for x in res: x["json"] = json.loads(x["out"]) if x["rc"] == 0 and x["out"].strip() else None
    return res


def ok(res):
    assert res["rc"] == 0, res["err"]
    return res["json"]


@pytest.fixture
def hub(tmp_path):
    with HubServer(tmp_path/"hub") as srv: yield srv


@pytest.fixture
def src(tmp_path):
    "A concept pack and a 2-layer lens pack written from scratch."
    cp = write_concept_pack(tmp_path/"src"/"animals", "animals", TREE)
    lp = random_lens_pack(tmp_path/"src"/"animals-lenses", CONCEPTS, layers=(3, 9), hidden_size=64, dtype="bf16")
    return cp, lp


def snapshot(root: Path) -> dict:
    "Every file under a store (but the lock) with its sha256."
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".registry.lock"}


# ---------------------------------------------------------------- formats
def test_schemas_agree_with_jsonschema(src):
    jsonschema = pytest.importorskip("jsonschema")
    cp, lp = src
    docs = [(json.loads((cp/"pack.json").read_text()), CONCEPT_PACK_SCHEMA), (json.loads((cp/"hierarchy.json").read_text()), HIERARCHY_SCHEMA),
            (json.loads((cp/"prompts"/"Dog.json").read_text()), PROMPTS_SCHEMA), (json.loads((lp/"pack_info.json").read_text()), LENS_PACK_SCHEMA),
            (json.loads((lp/"lenses.json").read_text()), LENSES_SCHEMA)]
    bad = [({**docs[0][0], "version": 3}, CONCEPT_PACK_SCHEMA), ({k: v for k, v in docs[1][0].items() if k != "roots"}, HIERARCHY_SCHEMA),
           ({**docs[3][0], "hidden_size": 0}, LENS_PACK_SCHEMA), ({**docs[3][0], "dtype": "int8"}, LENS_PACK_SCHEMA),
           ([{"concept": "Dog", "layer": "3"}], LENSES_SCHEMA), ([{"concept": "Dog", "layer": 3, "row": 0, "best": True, "calibration": {}}], LENSES_SCHEMA),
           ({**docs[2][0], "run": "import os"}, PROMPTS_SCHEMA), ({**docs[2][0], "positives_train": []}, PROMPTS_SCHEMA), ({**docs[0][0], "concepts": {"../x": docs[0][0]["concepts"]["Dog"]}}, CONCEPT_PACK_SCHEMA),
           ({"schema_version": 1, "packs": {"concept": {}}}, REGISTRY_SCHEMA)]
    for doc, schema in docs:
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(doc, schema); validate_schema(doc, schema)
    for doc, schema in bad:
        with pytest.raises(jsonschema.ValidationError): jsonschema.validate(doc, schema)
        with pytest.raises(PackSchemaError): validate_schema(doc, schema)


def test_validate_pack_cross_checks(tmp_path, src):
    cp, lp = src
    assert validate_pack(cp)[0] == "concept" and validate_pack(lp)[0] == "lens"
    (cp/"prompts"/"Unicorn.json").write_text(json.dumps({k: ["a unicorn"] for k in PROMPT_KEYS}))
    with pytest.raises(PackError, match="Unicorn"): validate_pack(cp)
    (cp/"prompts"/"Unicorn.json").unlink(); validate_pack(cp)
    good = (lp/"layer_3.safetensors").read_bytes(); t = load_file(lp/"layer_3.safetensors")
    save_file(t | {"extra": torch.zeros(8)}, lp/"layer_3.safetensors")
    with pytest.raises(PackError, match="holds tensors"): validate_pack(lp)
    save_file(t | {"W1": t["W1"][:, :, :32].contiguous()}, lp/"layer_3.safetensors")
    with pytest.raises(PackError, match="hidden_size"): validate_pack(lp)
    save_file({k: v[:4].contiguous() for k, v in t.items()}, lp/"layer_3.safetensors")
    with pytest.raises(PackError, match="stacks 4 lenses"): validate_pack(lp)
    (lp/"layer_3.safetensors").write_bytes(good); validate_pack(lp)
    (lp/"layer_9.safetensors").unlink()
    with pytest.raises(PackError, match=r"layer_9\.safetensors"): validate_pack(lp)
    (lp/"layer_9.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(Exception, match="not a readable safetensors"): validate_pack(lp)


# ---------------------------------------------------------------- local store
def test_local_refusals_leave_store_untouched(tmp_path, src):
    cp, lp = src
    store = PackStore(tmp_path/"store"); store.add_pack(cp); before = snapshot(store.root)
    (lp/"layer_3.pkl").write_bytes(b"\x80\x04K\x01.")                  # a pickle (of the int 1)
    with pytest.raises(PackSecurityError, match="can run code"): store.add_pack(lp)
    (lp/"layer_3.pkl").unlink(); (lp/"notes.txt").write_text("hi")
    with pytest.raises(PackSecurityError, match="not a file a lens pack may hold"): store.add_pack(lp)
    (lp/"notes.txt").unlink(); (lp/"lenses2.json").symlink_to("/etc/hostname")
    with pytest.raises(PackSecurityError, match="symlink"): store.add_pack(lp)
    for name in ["../x", "a/b", ".hidden", "x\x00"]:
        with pytest.raises(PackSecurityError): store.add_pack(cp, name=name)
    assert snapshot(store.root) == before


def test_corrupt_registry_detected_with_backup(tmp_path, src):
    store = PackStore(tmp_path/"store"); store.add_pack(src[0]); store.add_pack(src[1])
    good = json.loads(store.registry_path.read_text())
    for broken in ["{ not json", json.dumps({**good, "schema_version": "one"})]:
        store.registry_path.write_text(broken)
        with pytest.raises(RegistryCorruptError, match="A copy was kept") as e: store.list_lens_packs()
        backups = list(store.root.glob(".registry.json.corrupt-*"))
        assert any(b.read_text() == broken for b in backups) and str(store.registry_path) in str(e.value)
        with pytest.raises(RegistryCorruptError): store.add_pack(src[0], name="other")   # nothing written over a corrupt record
        assert store.registry_path.read_text() == broken and not store.pack_dir("concept", "other").exists()
    assert pack_main(["--store", str(store.root), "list"]) == 1
    assert pack_main(["--store", str(store.root), "status", "--offline", "--rebuild"]) == 0
    assert [p["name"] for p in store.list_lens_packs()] == ["animals-lenses"]


def test_fork_status_and_cli_in_process(tmp_path, src, capsys):
    store = PackStore(tmp_path/"store"); store.add_pack(src[0]); store.add_pack(src[1]); s = ["--store", str(store.root)]
    assert pack_main(s + ["fork", "animals", "animals-v2", "--version", "2.0.0"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["based_on"] == {"name": "animals", "source": "local", "version": "1.0.0", "revision": None} and rec["version"] == "2.0.0"
    pk = store.load_concept_pack("animals-v2"); assert pk.pack_id == "animals-v2" and pk.forked_from == "animals@1.0.0" and pk.version == "2.0.0"
    assert pack_main(s + ["fork", "animals", "animals-v2"]) == 1 and "already exists" in capsys.readouterr().err
    (store.pack_dir("lens", "animals-lenses")/"layer_3.safetensors").write_bytes((src[1]/"layer_9.safetensors").read_bytes())
    assert pack_main(s + ["status", "--offline"]) == 0
    st = {x["name"]: x for x in json.loads(capsys.readouterr().out)}
    assert st["animals-lenses"]["modified"] and not st["animals"]["modified"] and not st["animals-v2"]["modified"]
    assert store.record("lens", "animals-lenses")["modified"] is True
    assert pack_main(s + ["load", "animals-lenses"]) == 0 and json.loads(capsys.readouterr().out)["layers"] == {"3": 8, "9": 8}
    assert pack_main(s + ["load", "animals-lenses", "--verify"]) == 1 and "layer_3.safetensors" in capsys.readouterr().err   # modified above
    with pytest.raises(PackIntegrityError, match="layer_3.safetensors"): store.load_lens_pack("animals-lenses", verify=True)
    assert store.load_concept_pack("animals", verify=True).pack_id == "animals"
    assert pack_main(s + ["load", "nope"]) == 1 and "PackNotFoundError" in capsys.readouterr().err
    assert pack_main(s + ["frobnicate"]) == 2


def test_offline_load_is_clear(tmp_path, src):
    store = PackStore(tmp_path/"store"); store.add_pack(src[1])
    assert os.environ.get("HF_HUB_OFFLINE") == "1"          # conftest: tests never reach the real Hub
    assert store.load_lens_pack("animals-lenses").names == CONCEPTS
    with pytest.raises(PackNotFoundError, match="offline"): store.load_lens_pack("org/other-lenses")
    with pytest.raises(PackError, match="comes from local"): store.load_lens_pack("org/animals-lenses")
    with pytest.raises(PackError, match="offline"): store.pull("org/animals-lenses")
    assert pack_main(["--store", str(store.root), "push", "animals-lenses", "org/x"]) == 1


# ---------------------------------------------------------------- through the loopback Hub
def test_push_pull_load_same_scores_and_status(tmp_path, src, hub):
    a, b, c = PackStore(tmp_path/"a"), tmp_path/"b", PackStore(tmp_path/"c")
    a.add_pack(src[0]); a.add_pack(src[1]); c.add_pack(src[1], name="other")
    (c.pack_dir("lens", "other")/"pack_info.json").write_text(json.dumps({**json.loads((src[1]/"pack_info.json").read_text()), "version": "1.1.0"}))
    r = cli(hub.url, ["--store", a.root, "push", "animals-lenses", "org/lenses"], ["--store", a.root, "push", "animals", "org/animals"],
            ["--store", b, "pull", "org/lenses", "--version", "1.0.0"], ["--store", b, "load", "org/animals", "--kind", "concept"],
            ["--store", b, "status"], ["--store", b, "pull", "org/lenses"],
            ["--store", c.root, "push", "other", "org/lenses", "--kind", "lens"], ["--store", b, "status"], ["--store", b, "pull", "lenses"],
            ["--store", tmp_path/"b1", "pull", "org/lenses", "--version", "1.0.0"])
    pushed, pulled = ok(r[0]), ok(r[2])
    refs = hub.store.refs("org/lenses")
    assert refs["tags"]["v1.0.0"] == pushed["revision"] and pulled["revision"] == pushed["revision"]
    assert pulled["sha256"] == pushed["sha256"] and pulled["source"] == "hf://org/lenses" and pulled["synced_at"]
    assert ok(r[3])["concepts"] == len(CONCEPTS)                                 # auto-pull on load
    st = {x["name"]: x for x in ok(r[4])}
    assert st["lenses"]["outdated"] is False and st["animals"]["outdated"] is False and not st["lenses"]["modified"]
    assert ok(r[5]) == pulled                                                     # already at that sha: no-op
    newer = ok(r[6]); assert newer["revision"] != pushed["revision"]
    assert refs["tags"] == {"v1.0.0": pushed["revision"], "v1.1.0": newer["revision"]} and refs["branches"]["main"] == newer["revision"]
    st = {x["name"]: x for x in ok(r[7])}
    assert st["lenses"]["outdated"] is True and st["lenses"]["latest"] == newer["revision"]
    assert ok(r[8])["revision"] == newer["revision"]                              # pull by name follows main
    B = PackStore(b); assert B.status(remote=False)[1]["modified"] is False
    # the pack pushed from store a and pulled at v1.0.0 into a fresh store scores identically
    la = a.load_lens_pack("animals-lenses")
    assert ok(r[9])["revision"] == pushed["revision"]
    lb = PackStore(tmp_path/"b1").load_lens_pack("lenses")
    h = torch.randn(7, 64)
    assert la.names == lb.names == CONCEPTS and torch.equal(la.score(h), lb.score(h)) and torch.equal(la.thresholds, lb.thresholds)
    assert not any(m == "GET" and "/resolve/" in p and p.endswith(".gitattributes") for m, p in hub.requests)


def test_push_same_version_twice_refused(tmp_path, src, hub):
    a, a2 = PackStore(tmp_path/"a"), PackStore(tmp_path/"a2"); a.add_pack(src[0]); a2.add_pack(src[0])
    meta = json.loads((a2.pack_dir("concept", "animals")/"pack.json").read_text()); meta["description"] = "changed"   # same version, new content
    (a2.pack_dir("concept", "animals")/"pack.json").write_text(json.dumps(meta))
    first, again, r = cli(hub.url, ["--store", a.root, "push", "animals", "org/animals"], ["--store", a.root, "push", "animals", "org/animals"],
                          ["--store", a2.root, "push", "animals", "org/animals"])
    assert ok(again) == ok(first)                                                  # unchanged: a no-op
    assert r["rc"] == 1 and "already has v1.0.0" in r["err"] and "Bump the version" in r["err"]
    refs = hub.store.refs("org/animals")                                           # refused before any upload
    assert refs["tags"] == {"v1.0.0": ok(first)["revision"]} and refs["branches"]["main"] == ok(first)["revision"]


EVIL = ["../evil.json", "prompts/../../evil.json", "/abs.json", "layer_0.pkl", "model.bin", "run.py", "notes.txt"]

def test_malicious_remote_file_lists_refused_before_download(tmp_path, src, hub):
    files = {p.relative_to(src[0]).as_posix(): p.read_bytes() for p in src[0].rglob("*") if p.is_file()}
    for i, evil in enumerate(EVIL):
        hub.store.create(f"org/evil{i}"); hub.store.commit_files(f"org/evil{i}", files | {evil: b"\x80\x04K\x01."}, "evil")
    b = PackStore(tmp_path/"b"); b.add_pack(src[0], name="evil0"); before = snapshot(b.root)
    res = cli(hub.url, *[["--store", b.root, "pull", f"org/evil{i}", "--name", "evil0", "--force"] for i in range(len(EVIL))])
    for evil, r in zip(EVIL, res): assert r["rc"] == 1 and "PackSecurityError" in r["err"] and repr(evil) in r["err"], (evil, r["err"])
    assert not any("/resolve/" in p for _, p in hub.requests), "nothing may be downloaded from a repo that lists a bad file"
    assert snapshot(b.root) == before


def test_tampered_download_refused_previous_version_kept(tmp_path, src, hub):
    a, a2, b = PackStore(tmp_path/"a"), PackStore(tmp_path/"a2"), PackStore(tmp_path/"b"); a.add_pack(src[0]); a.add_pack(src[1], name="lenses")
    a2.add_pack(src[0]); meta = json.loads((a2.pack_dir("concept", "animals")/"pack.json").read_text()) | {"version": "1.1.0"}
    (a2.pack_dir("concept", "animals")/"pack.json").write_text(json.dumps(meta))
    r = cli(hub.url, ["--store", a.root, "push", "animals", "org/animals"], ["--store", b.root, "pull", "org/animals"], ["--store", a.root, "push", "lenses", "org/lenses"],
            ["--store", a2.root, "push", "animals", "org/animals"])
    for x in r: ok(x)
    before = snapshot(b.root)
    blob = (a2.pack_dir("concept", "animals")/"pack.json").read_bytes()
    hub.tamper("org/animals", "pack.json", blob.replace(b"1.1.0", b"6.6.6"))     # same size: only the hash can tell
    w = bytearray((a.pack_dir("lens", "lenses")/"layer_3.safetensors").read_bytes()); w[-8:] = bytes(8)
    hub.tamper("org/lenses", "layer_3.safetensors", bytes(w))                   # an LFS file: checked against the Hub's sha256
    r = cli(hub.url, ["--store", b.root, "pull", "animals"], ["--store", b.root, "pull", "org/lenses"])
    assert r[0]["rc"] == 1 and "PackIntegrityError" in r[0]["err"] and "pack.json" in r[0]["err"] and "blob id" in r[0]["err"], r[0]["err"]
    assert r[1]["rc"] == 1 and "PackIntegrityError" in r[1]["err"] and "layer_3.safetensors" in r[1]["err"] and "LFS sha256" in r[1]["err"], r[1]["err"]
    assert snapshot(b.root) == before and not list((b.root/".staging").iterdir())


def test_interrupted_download_keeps_previous_version(tmp_path, src, hub):
    a, a2, b = PackStore(tmp_path/"a"), PackStore(tmp_path/"a2"), PackStore(tmp_path/"b"); a.add_pack(src[1], name="lenses")
    random_lens_pack(tmp_path/"v2", CONCEPTS, layers=(3, 9), hidden_size=64, seed=1)
    (tmp_path/"v2"/"pack_info.json").write_text(json.dumps(json.loads((tmp_path/"v2"/"pack_info.json").read_text()) | {"version": "2.0.0"}))
    a2.add_pack(tmp_path/"v2", name="lenses")
    r = cli(hub.url, ["--store", a.root, "push", "lenses", "org/lenses"], ["--store", b.root, "pull", "org/lenses"], ["--store", a2.root, "push", "lenses", "org/lenses"])
    for x in r: ok(x)
    assert ok(r[1])["version"] == "1.0.0"
    before = snapshot(b.root)
    hub.fail_download("layer_9.safetensors", after=4096)
    r = cli(hub.url, ["--store", b.root, "pull", "lenses"])[0]
    assert r["rc"] == 1 and "store was left unchanged" in r["err"] and "503" in r["err"], r["err"][-2000:]
    assert hub.faults["layer_9.safetensors"]["served"]
    assert snapshot(b.root) == before and not list((b.root/".staging").iterdir())
    hub.faults.clear()                                                               # the server is back: the same pull now succeeds
    assert ok(cli(hub.url, ["--store", b.root, "pull", "lenses"])[0])["version"] == "2.0.0"


def test_concurrent_pulls_do_not_corrupt(tmp_path, hub):
    a = PackStore(tmp_path/"a")
    big = random_lens_pack(tmp_path/"big", [f"c{i}" for i in range(96)], layers=(1, 2), hidden_size=192, dtype="fp32", seed=3)   # ~ 20 MB
    a.add_pack(big, name="big")
    ok(cli(hub.url, ["--store", a.root, "push", "big", "org/big"])[0])
    procs = [cli(hub.url, ["--store", tmp_path/"b", "pull", "org/big"], popen=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs): assert p.returncode == 0, err[-3000:]
    recs = [ok(_parse(out)[0]) for out, _ in outs]
    assert recs[0]["revision"] == recs[1]["revision"] == a.record("lens", "big")["revision"]
    b = PackStore(tmp_path/"b"); assert b.status(remote=False)[0]["modified"] is False
    assert b.read_registry()["packs"]["lens"]["big"]["sha256"] == a.record("lens", "big")["sha256"]
    validate_pack(b.pack_dir("lens", "big"))
    assert not list((b.root/".staging").iterdir())
    assert sum(1 for m, p in hub.requests if m == "GET" and p.endswith("/resolve/" + a.record("lens", "big")["revision"] + "/layer_1.safetensors")) == 1


# ---------------------------------------------------------------- packs from the lenses subsystem
def test_shipped_concept_pack_and_trained_lenses_round_trip(tmp_path, hub):
    "The shipped concept pack and lenses trained and saved by the lenses subsystem go to the Hub and back, and score the same."
    from hsa_lib.lenses import bank, concepts, training
    from hsa_lib.lenses.capture import LensSpec
    from hsa_lib.lenses.classifiers import MLPClassifier
    core, D, layers = concepts.load_default_pack(), 32, [2, 5]
    names, g, lenses = sorted(core.concepts)[:4], torch.Generator().manual_seed(0), {}
    for i, c in enumerate(names):                                                  # separable synthetic activations: lens i reads feature i
        x = torch.randn(64, D, generator=g); y = (x[:, i] > 0).long(); fit = {}
        for l in layers: fit[l] = training.train_classifier(x, y, training.TrainConfig(max_epochs=30, sample_schedule=(48,), seed=l))
        lenses[c] = training.Lens(c, {l: LensSpec("HuggingFaceTB/SmolLM2-135M-Instruct", D, l, "mean") for l in layers},
                                  {l: fit[l][0] for l in layers}, {l: fit[l][1] for l in layers})
    trained = bank.save_lens_pack(lenses, tmp_path/"trained", core.pack_id, core.version, dtype="fp32")
    for l in layers:                                                               # stack_classifiers writes what the bank writes
        st, ref = stack_classifiers([lenses[c].classifiers[l] for c in names], "fp32"), load_file(trained/f"layer_{l}.safetensors")
        assert st.keys() == ref.keys() and all(torch.equal(st[k], ref[k]) for k in ref)
    with pytest.raises(TypeError): stack_classifiers([MLPClassifier(D, layernorm=True)])
    with pytest.raises(PackError, match="one shape"): stack_classifiers([MLPClassifier(D), MLPClassifier(D + 1)])
    a = PackStore(tmp_path/"a"); a.add_pack(concepts.pack_dir()); a.add_pack(trained, name="trained")
    r = cli(hub.url, ["--store", a.root, "push", concepts.DEFAULT_PACK, "org/core"], ["--store", a.root, "push", "trained", "org/trained"],
            ["--store", tmp_path/"b", "pull", "org/core"], ["--store", tmp_path/"b", "pull", "org/trained"],
            ["--store", tmp_path/"c", "load", "org/trained", "--kind", "lens"])
    for x in r: ok(x)
    assert ok(r[4])["layers"] == {"2": 4, "5": 4} and ok(r[4])["resident"] == 4
    b = PackStore(tmp_path/"b")
    theirs = b.load_concept_pack("core")
    assert theirs.concepts == core.concepts and theirs.prompts == core.prompts and theirs.hierarchy == core.hierarchy and len(theirs) >= 40
    h = torch.randn(6, D); want, got = bank.load_lens_pack(trained), b.load_lens_pack("trained")
    assert got.names == want.names and sorted(got.names) == names and torch.equal(got.thresholds, want.thresholds)
    z = got.score({l: h for l in got.layers}); assert torch.equal(z, want.score({l: h for l in want.layers}))
    for c in names:                                                                # = each trained lens at its best layer
        torch.testing.assert_close(z[:, got.names.index(c)], lenses[c].logits(h, lenses[c].spec))


def test_module_level_api(tmp_path, src):
    from hsa_lib.lenses import registry as R
    store = PackStore(tmp_path/"store")                 # the functions below take store= (default: $HSA_LIB_PACKS or the cache)
    store.add_pack(src[0]); store.add_pack(src[1])
    assert [p["name"] for p in R.list_concept_packs(store)] == ["animals"] and [p["name"] for p in R.list_lens_packs(store)] == ["animals-lenses"]
    assert R.fork_pack("animals-lenses", "mine", store=store)["based_on"]["name"] == "animals-lenses"
    assert R.load_lens_pack("mine", store=store).names == CONCEPTS and R.load_concept_pack("animals", store=store).children("Entity") == ["Animal", "Object"]
    assert {s["name"]: s["modified"] for s in R.pack_status(store, remote=False)} == {"animals": False, "animals-lenses": False, "mine": False}
    with pytest.raises(KeyError, match="Unicorn"): store.load_lens_pack("mine", concepts=["Dog", "Unicorn"])
    with pytest.raises(ValueError, match="32"): store.load_lens_pack("mine").score(torch.randn(2, 32))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "", "a", "b.json", "~", "/", "\\\\", "C:", "prompts", "x\x00"]), min_size=1, max_size=5))
def test_check_relpath_never_escapes(parts):
    "Any path check_relpath accepts stays inside the folder it is joined to."
    p = "/".join(parts)
    try: ok_path = check_relpath(p)
    except PackSecurityError: return
    root = Path("/store/pack")
    assert (root/ok_path).resolve().is_relative_to(root) and ".." not in ok_path.split("/") and not ok_path.startswith("/")

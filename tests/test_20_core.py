"What hsa_lib.core must survive: crashes mid-write, corrupt JSON, hostile cache names, any config."
import dataclasses, json, os, signal, subprocess, sys, textwrap
import pytest
from hypothesis import given, settings, strategies as st
from hsa_lib.core import Config, ConfigError, CorruptFileError, atomic_write, atomic_write_json, cache_dir, read_json

def test_atomic_write_survives_a_killed_writer(tmp_path):
    "A process killed (SIGKILL) halfway through a write leaves the previous file intact."
    target = tmp_path/"weights.bin"; target.write_bytes(b"old" * 1000)
    code = textwrap.dedent(f"""
        import os, signal
        from hsa_lib.core import atomic_write
        with atomic_write({str(target)!r}) as f:
            f.write(b"new" * 100000); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old" * 1000

def test_failed_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(tmp_path/"x.json", "w") as f: f.write("{"); 1/0
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize("content", [b"", b'{"a": ', b"\xff\xfe\x00garbage", b"[1, 2"])
def test_corrupt_json_names_the_file(tmp_path, content):
    p = tmp_path/"pack.json"; p.write_bytes(content)
    with pytest.raises(CorruptFileError, match="pack.json is not valid JSON"): read_json(p)

@pytest.mark.parametrize("bad", ["..", "../x", "/etc", "a/../../b", ""])
def test_cache_dir_refuses_escapes(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("HSA_LIB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="relative name"): cache_dir("models", bad)

@dataclasses.dataclass
class Inner(Config):
    scale: float = 1.0
    dims: tuple = (1, 2)

@dataclasses.dataclass
class Outer(Config):
    name: str = "x"
    steps: int = 1
    flags: list = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)

names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
floats = st.floats(allow_nan=False, allow_infinity=False)

@settings(max_examples=200, deadline=None)
@given(name=names, steps=st.integers(-2**53, 2**53), flags=st.lists(st.booleans(), max_size=5), scale=floats,
       dims=st.lists(st.integers(0, 10**6), max_size=4).map(tuple))
def test_config_json_round_trip(name, steps, flags, scale, dims):
    cfg = Outer(name, steps, flags, Inner(scale, dims))
    assert Outer.from_json(cfg.to_json()) == cfg

def test_config_rejects_unknown_and_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"no field\(s\) \['stpes'\]"): Outer.from_dict({"stpes": 3})
    with pytest.raises(ConfigError, match="expects a JSON object"): Outer.from_dict([1, 2])
    (tmp_path/"c.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="c.json"): Outer.from_json(tmp_path/"c.json")

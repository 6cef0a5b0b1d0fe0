"""Corrupt and tampered zoo checkpoints: every case is a one-line CheckpointError that names the file.

Each test works on a copy of the shipped ``moons-vp-eps`` checkpoint (the smaller one) in ``tmp_path``,
reached by name through ``root=``/``SDEKIT_ZOO_DIR`` or by path; the shipped files are never touched.
"""

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

import sdekit
from sdekit import zoo

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "moons-vp-eps"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def folder(tmp_path):
    """A zoo folder holding an intact copy of the shipped ``NAME`` checkpoint."""
    out = tmp_path / "zoo"
    out.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(zoo.ZOO_DIR / f"{NAME}{suffix}", out / f"{NAME}{suffix}")
    return out


def _weights(folder):
    return folder / f"{NAME}.safetensors"


def _sidecar(folder):
    return folder / f"{NAME}.json"


def _edit_sidecar(folder, edit):
    sidecar = json.loads(_sidecar(folder).read_text())
    edit(sidecar["weights"])
    _sidecar(folder).write_text(json.dumps(sidecar))


# The first 8 bytes of a safetensors file are the header length (little-endian u64), then the JSON header,
# then the tensor data.
def _truncated(data):
    return data[: len(data) // 2]


def _empty(data):
    return b""


def _huge_header_length(data):
    return struct.pack("<Q", 2**62) + data[8:]


def _non_json_header(data):
    (length,) = struct.unpack("<Q", data[:8])
    return data[:8] + b"{" + b"x" * (length - 1) + data[8 + length:]


CORRUPTIONS = [_truncated, _empty, _huge_header_length, _non_json_header]


def _flip_last_byte(data):
    """Still valid safetensors with the same names and shapes: one tensor element changes."""
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("rehash", [False, True], ids=["sidecar-as-shipped", "sidecar-rehashed"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_weights_file_is_a_checkpoint_error(folder, corrupt, rehash):
    """With the shipped sidecar the bytes also fail the hash; with a rehashed one only the parser can object,
    as for a checkpoint whose sidecar was written for the corrupt file."""
    weights = _weights(folder)
    data = corrupt(weights.read_bytes())
    weights.write_bytes(data)
    if rehash:
        _edit_sidecar(folder, lambda w: w.update(sha256=hashlib.sha256(data).hexdigest()))
    for load in (lambda: zoo.load(weights), lambda: zoo.load(folder / NAME),
                 lambda: zoo.load(NAME, root=folder)):
        with pytest.raises(zoo.CheckpointError, match=re.escape(f"weights file {weights} is not a valid safetensors "
                                                                "file")) as excinfo:
            load()
        message = str(excinfo.value)
        assert "\n" not in message
        assert ("SHA-256 differs" in message) is not rehash
        assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__  # no library traceback


def test_valid_file_with_another_hash_is_a_checkpoint_error_naming_it(folder):
    weights = _weights(folder)
    weights.write_bytes(_flip_last_byte(weights.read_bytes()))
    for load in (lambda: zoo.load(weights), lambda: zoo.load(NAME, root=folder)):
        with pytest.raises(zoo.CheckpointError, match=re.escape(f"weights file {weights} does not match its sidecar "
                                                                f"{NAME}.json: SHA-256 differs")):
            load()


def test_sidecar_without_sha256_is_rejected(folder):
    """Deleting the hash must not switch the integrity check off: the tampered weights below would load."""
    weights = _weights(folder)
    weights.write_bytes(_flip_last_byte(weights.read_bytes()))
    _edit_sidecar(folder, lambda w: w.pop("sha256"))
    expected = re.escape(f"sidecar {_sidecar(folder)} lacks weights.sha256")
    with pytest.raises(zoo.CheckpointError, match=expected):
        zoo.load(weights)
    with pytest.raises(zoo.CheckpointError, match=expected):
        zoo.load(NAME, root=folder)
    with pytest.raises(zoo.CheckpointError, match=expected):
        zoo.info(_sidecar(folder))


@pytest.mark.parametrize("digest", [None, 12345, "", "abc123", "g" * 64, "0" * 63, ["0" * 64]],
                         ids=["null", "number", "empty", "short", "not-hex", "63-digits", "list"])
def test_malformed_sha256_is_rejected(folder, digest):
    _edit_sidecar(folder, lambda w: w.update(sha256=digest))
    with pytest.raises(zoo.CheckpointError, match=re.escape(f"sidecar {_sidecar(folder)}") + ".*weights.sha256"):
        zoo.load(folder / NAME)


def test_uppercase_sha256_is_accepted(folder):
    """Hexadecimal is case-insensitive: a hash written in capitals still checks the weights."""
    _edit_sidecar(folder, lambda w: w.update(sha256=w["sha256"].upper()))
    assert isinstance(zoo.load(folder / NAME), sdekit.ScoreModel)


def test_non_utf8_sidecar_is_a_checkpoint_error(folder):
    _sidecar(folder).write_bytes(b"\xff\xfe{}")
    with pytest.raises(zoo.CheckpointError, match=re.escape(f"sidecar {_sidecar(folder)} is not valid JSON")):
        zoo.load(folder / NAME)


def test_zoo_folder_from_root_and_environment(folder, monkeypatch):
    """``root=`` and ``SDEKIT_ZOO_DIR`` point name lookup at another folder; without them it is the package's."""
    assert zoo.available(root=folder) == [NAME]
    assert zoo.info(NAME, root=folder)["name"] == NAME
    assert isinstance(zoo.load(NAME, root=folder), sdekit.ScoreModel)
    with pytest.raises(ValueError, match=re.escape(f"unknown zoo model 'digits-vp-eps'; known: {NAME} (zoo folder "
                                                   f"{folder})")):
        zoo.load("digits-vp-eps", root=folder)
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(folder))
    assert zoo.available() == [NAME]
    _weights(folder).write_bytes(b"")  # a name now resolves to the copy, not to the shipped file
    with pytest.raises(zoo.CheckpointError, match=re.escape(str(_weights(folder)))):
        zoo.load(NAME)
    monkeypatch.delenv(zoo.ZOO_DIR_ENV)
    assert zoo.available() == sorted(zoo.RECIPES)


@pytest.mark.parametrize("case", ["huge-header-length", "no-sha256"])
def test_cli_reports_a_corrupt_checkpoint_in_one_line(folder, tmp_path, case):
    """The installed command, pointed at the corrupt copy through SDEKIT_ZOO_DIR: exit code 2, one line."""
    if case == "huge-header-length":
        _weights(folder).write_bytes(_huge_header_length(_weights(folder).read_bytes()))
        named = _weights(folder)
    else:
        _edit_sidecar(folder, lambda w: w.pop("sha256"))
        named = _sidecar(folder)
    env = {**os.environ, zoo.ZOO_DIR_ENV: str(folder)}
    r = subprocess.run([sys.executable, "-m", "sdekit", "compare", "--model", NAME, "--solvers", "ddim", "--nfe", "5",
                        "--samples", "4", "--no-plots", "--no-progress", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("sdekit: error: ") and str(named) in lines[0], r.stderr


def test_sidecar_tensor_entry_without_shape_is_a_checkpoint_error(tmp_path):
    import sdekit.zoo as zoo

    src = zoo.ZOO_DIR
    for f in src.iterdir():
        if f.name.startswith("moons-vp-eps"):
            shutil.copy(f, tmp_path / f.name)
    sidecar = tmp_path / "moons-vp-eps.json"
    meta = json.loads(sidecar.read_text())
    first = next(iter(meta["weights"]["tensors"]))
    del meta["weights"]["tensors"][first]["shape"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(zoo.CheckpointError, match="shape"):
        zoo.load("moons-vp-eps", root=tmp_path)

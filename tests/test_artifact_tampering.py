"""A tampered artifact is refused, and nothing in one is ever unpickled: each case below plants a pickle whose
loading would create a marker file, then loads the artifact the way serving does. Checked by loading, not by
reading the loader's source."""

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from lmrec.errors import LmrecError

try:  # the artifact runtime moves from lmrec.export to lmrec.artifact
    from lmrec.artifact import load_artifact
except ImportError:
    from lmrec.export import load_artifact

MANIFEST = "manifest.json"


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the artifact."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy(art: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    return copy


def _relist(art: Path) -> None:
    """Re-sign the manifest as an attacker who can write the artifact's folder would: every file's sha256 as it is now."""
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["files"] = {p.relative_to(art).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(art.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (art / MANIFEST).write_text(json.dumps(manifest))


def _pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


@pytest.mark.parametrize("name", ["model.pkl", "tokenizer/pytorch_model.bin", "items.npy"])
def test_a_planted_file_is_refused_and_never_unpickled(tiny_artifact, tmp_path, name):
    art = _copy(tiny_artifact[0], tmp_path)
    marker = tmp_path / "pwned"
    (art / name).write_bytes(_pickle(marker))
    with pytest.raises(LmrecError, match="not in the manifest"):
        load_artifact(art, threads=1)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["items.safetensors", "user_tower.onnx", "catalog.parquet", "tokenizer/tokenizer.json", "config.yaml"])
def test_a_file_replaced_by_a_pickle_is_refused_and_never_unpickled(tiny_artifact, tmp_path, name):
    art = _copy(tiny_artifact[0], tmp_path)
    marker = tmp_path / "pwned"
    (art / name).write_bytes(_pickle(marker))
    with pytest.raises(LmrecError, match=f"checksum mismatch for {name}"):
        load_artifact(art, threads=1)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["items.safetensors", "user_tower.onnx", "catalog.parquet"])
def test_a_pickle_behind_a_re_signed_manifest_is_never_unpickled(tiny_artifact, tmp_path, name):
    """The manifest's checksums catch damage, not an attacker who rewrites them too: what still holds is that
    every file is read by a parser of data (safetensors, ONNX, Parquet), so the pickle fails to parse."""
    art = _copy(tiny_artifact[0], tmp_path)
    marker = tmp_path / "pwned"
    (art / name).write_bytes(_pickle(marker))
    _relist(art)
    with pytest.raises(Exception):  # noqa: B017 (each format's parser has its own error)
        artifact = load_artifact(art, threads=1)
        artifact.engine.encode(["a trail running vest"])  # the text encoder opens on first use
    assert not marker.exists()


def test_a_listed_file_of_a_kind_the_loader_never_reads_is_refused(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact[0], tmp_path)
    marker = tmp_path / "pwned"
    (art / "extra.pkl").write_bytes(_pickle(marker))
    _relist(art)
    try:
        with pytest.raises(LmrecError, match="extra.pkl"):
            load_artifact(art, threads=1)
    finally:
        assert not marker.exists()

"""Checkpoint files: checksummed, atomic, the previous good one kept, nothing non-finite written."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from bbn.engine.checkpoint import (FILE_FORMAT, load_checkpoint, nonfinite_entries, previous_path,
                            save_checkpoint)
from bbn.errors import BBNError


def _payload(value: float) -> dict:
    return {"format": 2, "config": {"name": "t"}, "epoch": int(value),
            "model": {"w": torch.full((3, 4), value), "n": torch.tensor(7)}, "history": [{"loss": value}]}


def _flip_payload_byte(path: Path) -> None:
    """Flip one bit of the stored state (not of the file's framing, which may be padding)."""
    payload = torch.load(path, weights_only=True)["payload"].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(payload[len(payload) // 2 : len(payload) // 2 + 32]) + 5
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_and_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.5), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3, 4), 1.5)) and loaded["history"] == [{"loss": 1.5}]
    outer = torch.load(path, weights_only=True)  # a plain file, readable without full unpickling
    assert outer["bbn_checkpoint"] == FILE_FORMAT
    data = outer["payload"].numpy().tobytes()
    assert outer["sha256"] == hashlib.sha256(data).hexdigest()
    inner = torch.load(io.BytesIO(data), weights_only=True)
    assert torch.equal(inner["model"]["w"], loaded["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_keep_previous_rotates(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    assert previous_path(path) == tmp_path / "last.prev.pt"
    for value in (1.0, 2.0, 3.0):
        save_checkpoint(_payload(value), path, keep_previous=True)
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(previous_path(path))["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


@pytest.mark.parametrize("damage", ["checksum", "flip", "truncate"])
def test_a_damaged_checkpoint_falls_back_to_the_previous(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path, keep_previous=True)
    save_checkpoint(_payload(2.0), path, keep_previous=True)
    if damage == "checksum":  # a well-formed file whose payload does not match its checksum
        outer = torch.load(path, weights_only=True)
        data = outer["payload"].numpy().tobytes().replace(b"history", b"histOry")
        outer["payload"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        torch.save(outer, path)
    elif damage == "flip":
        _flip_payload_byte(path)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    warnings: list[str] = []
    loaded = load_checkpoint(path, warn=warnings.append)
    assert loaded["epoch"] == 1
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(path) in warnings[0] and str(previous_path(path)) in warnings[0]
    if damage == "checksum":
        assert "fails its checksum" in warnings[0]
    # the damaged file is never rotated over the good previous one
    save_checkpoint(_payload(3.0), path, keep_previous=True)
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    assert load_checkpoint(path)["epoch"] == 3


def test_damaged_without_a_previous_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(_payload(1.0), path)
    _flip_payload_byte(path)
    with pytest.raises(BBNError, match="best.pt") as info:
        load_checkpoint(path, warn=pytest.fail)
    assert "\n" not in str(info.value)


def test_both_damaged_is_an_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path, keep_previous=True)
    save_checkpoint(_payload(2.0), path, keep_previous=True)
    for damaged in (path, previous_path(path)):
        damaged.write_bytes(b"garbage")
    with pytest.raises(BBNError, match=r"last\.pt' cannot be read .*; the previous one 'last\.prev\.pt' is damaged too"):
        load_checkpoint(path, warn=pytest.fail)


def test_the_warning_goes_to_stderr_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path, keep_previous=True)
    save_checkpoint(_payload(2.0), path, keep_previous=True)
    path.write_bytes(b"")
    assert load_checkpoint(path)["epoch"] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bbn: warning: checkpoint ") and "last.prev.pt" in err


def test_format_1_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save(_payload(4.0), path)
    assert load_checkpoint(path)["epoch"] == 4


def test_an_unknown_file_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"bbn_checkpoint": FILE_FORMAT + 1, "sha256": "", "payload": torch.zeros(1, dtype=torch.uint8)}, path)
    with pytest.raises(BBNError, match=f"file format {FILE_FORMAT + 1}"):
        load_checkpoint(path)


def test_non_finite_values_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path, keep_previous=True)
    before = path.read_bytes()
    bad = _payload(2.0)
    bad["model"]["w"][1, 2] = float("nan")
    with pytest.raises(BBNError, match=r"refusing to write checkpoint .*model\.w holds NaN or inf"):
        save_checkpoint(bad, path, keep_previous=True)
    assert path.read_bytes() == before and not previous_path(path).exists()
    assert nonfinite_entries({"a": [1.0, float("inf")], "b": torch.tensor([0.0]), "c": torch.tensor([1])}) == ["a.1."]


def test_a_crash_while_writing_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path, keep_previous=True)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "bbn_checkpoint" in obj:
            f.write(b"PK\x03\x04 half a file")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_payload(2.0), path, keep_previous=True)
    monkeypatch.undo()
    assert load_checkpoint(path, warn=pytest.fail)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"
    # what a killed writer leaves behind is cleared by the next write
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".last.prev.pt.999.tmp").write_bytes(b"link")
    save_checkpoint(_payload(3.0), path, keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]



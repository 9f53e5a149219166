"""Safe loading: files carrying a pickle payload that would run a command are refused with a
BBNError before the payload runs: checkpoints (`load_checkpoint`, `bbn eval`, `bbn train
--resume`), CIFAR batches, YAML configs and overrides, .npz arrays. Each test first shows
that the payload is live (an unrestricted loader does create the marker file), then that
bbn refuses it and the marker stays absent. A scan of the source keeps every loader safe."""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from arrays_data import ARRAYS_TRAIN, write_arrays
from cifar_format import dump_pickle, write_cifar10
from cli_checks import assert_bad_input

from bbn.engine.checkpoint import load_checkpoint, save_checkpoint
from bbn.config import Config, load_config, read_yaml, save_config
from bbn.data.arrays import load_arrays_file
from bbn.errors import BBNError
from bbn.models import create_model

SRC = Path(__file__).parents[1] / "src" / "bbn"


class Planted:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def assert_live(load: Callable[[], object], marker: Path) -> None:
    """The payload really runs when loaded without restrictions (then the marker is removed)."""
    assert not marker.exists()
    try:
        load()
    except Exception:  # what the payload returns may not fit the loader: it ran all the same
        pass
    assert marker.exists(), "the planted payload did not run under an unrestricted loader"
    marker.unlink()


def refused(*parts: str):
    return pytest.raises(BBNError, match=".*".join(re.escape(p) for p in parts))


def planted_payload(marker: Path) -> dict[str, object]:
    """A checkpoint-shaped dict whose model entry is the payload."""
    return {"format": 2, "config": Config().to_dict(), "epoch": 1, "model": Planted(marker)}


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def _zip_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(planted_payload(marker), path)  # torch's zip format
    return path


def _legacy_checkpoint(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(planted_payload(marker), f, protocol=2)  # a bare pickle, torch's legacy format
    return path


def _bbn_container(path: Path, marker: Path) -> Path:
    """The payload inside the file format bbn itself writes (with a valid checksum, if any)."""
    save_checkpoint(planted_payload(marker), path)
    return path


@pytest.mark.parametrize("write", [_zip_checkpoint, _legacy_checkpoint])
def test_planted_checkpoint_is_live_but_refused(write: Callable[[Path, Path], Path], tmp_path: Path,
                                                marker: Path) -> None:
    path = write(tmp_path / "best.pt", marker)
    assert_live(lambda: torch.load(path, weights_only=False), marker)
    with refused(str(path), "cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()


def test_planted_payload_in_bbns_own_format_is_refused(tmp_path: Path, marker: Path) -> None:
    path = _bbn_container(tmp_path / "best.pt", marker)
    assert b"posix" in path.read_bytes() or b"system" in path.read_bytes()  # the payload is in the file
    with refused(str(path)):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("write", [_zip_checkpoint, _legacy_checkpoint, _bbn_container])
def test_bbn_eval_refuses_a_planted_checkpoint(write: Callable[[Path, Path], Path], tmp_path: Path, marker: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "checkpoints" / "best.pt" if write is _bbn_container else tmp_path / "best.pt", marker)
    assert_bad_input(["eval", str(path), "--device", "cpu"], capsys, str(path))
    assert not marker.exists()
    assert not (tmp_path / "eval.json").exists()


def test_resume_refuses_a_planted_last_checkpoint(tmp_path: Path, marker: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(load_config("digits_ce"), run / "config.yaml")
    last = _bbn_container(run / "checkpoints" / "last.pt", marker)
    before = last.read_bytes()
    assert_bad_input(["train", "--resume", str(run)], capsys, "last.pt")
    assert not marker.exists()
    assert last.read_bytes() == before and sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.yaml"]


def test_a_real_checkpoint_still_loads(tmp_path: Path) -> None:
    """The restrictions refuse payloads, not checkpoints: tensors, dicts, lists and numbers load."""
    model = create_model("resnet32", 10, 1)
    payload = {"format": 2, "config": Config().to_dict(), "epoch": 3, "model": model.state_dict(),
               "history": [{"epoch": 1, "alpha": None, "lr": 0.1}], "torch_rng": torch.get_rng_state()}
    save_checkpoint(payload, tmp_path / "last.pt")
    back = load_checkpoint(tmp_path / "last.pt")
    assert back["epoch"] == 3 and back["history"] == payload["history"]
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())


# --- CIFAR batches, YAML, .npz --------------------------------------------------------------


def test_planted_cifar_batch_is_live_but_refused(tmp_path: Path, marker: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_cifar10(tmp_path / "data", images_per_class_train=3, images_per_class_test=1)
    batch = folder / "data_batch_2"
    dump_pickle({b"data": np.zeros((3, 3072), np.uint8), b"labels": Planted(marker)}, batch)  # the real format
    assert_live(lambda: pickle.loads(batch.read_bytes(), encoding="bytes"), marker)
    out = tmp_path / "run"
    assert_bad_input(["train", "cifar10_ir100_bbn", "data.imbalance_ratio=2", f"data.root={tmp_path / 'data'}",
                      "--out", str(out)], capsys, "data_batch_2", "refuses to load global", "system")
    assert not marker.exists() and not out.exists()


def test_planted_yaml_is_live_but_refused(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_live(lambda: yaml.unsafe_load(path.read_text()), marker)
    with refused(str(path), "YAML tag", "refused"):
        read_yaml(path)
    assert_bad_input(["train", str(path)], capsys, "evil.yaml")
    # in an override the tag is not YAML either: the value stays plain text, and is a bad device name
    assert_bad_input(["train", f"train.device=!!python/object/apply:os.system ['touch {marker}']",
                      "--out", str(tmp_path / "run")], capsys, "train.device")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_planted_npz_is_live_but_refused(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_arrays(tmp_path / "evil.npz", y_test=np.array([Planted(marker)] * 16, dtype=object))
    assert_live(lambda: np.load(path, allow_pickle=True)["y_test"], marker)
    with refused(str(path), "'y_test' is an object array", "refused"):
        load_arrays_file(path)
    assert_bad_input(["train", f"data.root={path}", *ARRAYS_TRAIN, "--out", str(tmp_path / "run")], capsys,
                     "evil.npz", "object array")
    assert not marker.exists() and not (tmp_path / "run").exists()
    # a bare pickle saved under an .npz name
    bare = tmp_path / "bare.npz"
    bare.write_bytes(pickle.dumps(Planted(marker)))
    with refused(str(bare), "not an .npz archive", "pickled data"):
        load_arrays_file(bare)
    assert not marker.exists()


# --- every loader in the source stays safe ----------------------------------------------------


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def unsafe_loads(tree: ast.AST) -> list[str]:
    """Calls that could unpickle or evaluate foreign data, with the line they are on."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            bad = (
                (name == "torch.load" and _keyword(node, "weights_only") is not True)
                or (name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False)
                or name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
                            "yaml.load_all", "eval", "exec", "marshal.loads", "shelve.open", "dill.load")
            )
            if bad:
                found.append(f"{name} at line {node.lineno}")
        if isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases):
            if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                found.append(f"Unpickler subclass {node.name} without find_class at line {node.lineno}")
    return found


def test_the_scan_finds_unsafe_loads() -> None:
    code = ("import torch, yaml, pickle, numpy as np\n"
            "torch.load(p)\ntorch.load(p, weights_only=False)\nyaml.load(s)\npickle.loads(b)\n"
            "np.load(p)\neval(t)\nclass U(pickle.Unpickler):\n    pass\n"
            "torch.load(p, weights_only=True)\nyaml.safe_load(s)\nnp.load(p, allow_pickle=False)\nm.eval()\n")
    assert len(unsafe_loads(ast.parse(code))) == 7


def test_no_loader_in_the_source_can_run_foreign_code() -> None:
    problems = {str(path.relative_to(SRC)): found for path in sorted(SRC.rglob("*.py"))
                if (found := unsafe_loads(ast.parse(path.read_text(), str(path))))}
    assert problems == {}

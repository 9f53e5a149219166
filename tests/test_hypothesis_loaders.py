"""Property: whatever a loader is given - random bytes, cut or mutated real files, random
structures in the real format, random configs, random arrays - it loads or raises BBNError,
never another exception (which would reach the user as a traceback). 60 examples per test;
BBN_FUZZ_EXAMPLES=5000 searches longer."""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import yaml
from arrays_data import valid_arrays
from cifar_format import Py2Pickler, write_cifar10
from image_files import image_folder, inat_original
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bbn.engine.checkpoint import load_checkpoint, save_checkpoint
from bbn.config import (Config, DataConfig, _set_dotted, build_config, check_schedule, parse_override, read_yaml,
                        valid_keys)
from bbn.data.arrays import load_arrays_file
from bbn.data.sources import load_source
from bbn.errors import BBNError
from bbn.engine.session import check_names

# torch's note on the protocol byte of random files; the loader's answer is what is tested
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

FUZZ = settings(max_examples=int(os.environ.get("BBN_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def loads_or_bbn_error(load: Callable[[], Any]) -> Any:
    """Run `load`; a BBNError is a fine answer, any other exception fails the property."""
    try:
        return load()
    except BBNError as err:
        assert "\n" not in str(err), str(err)  # one line
        return None


# --- byte-level mutations of a real file ---------------------------------------------------


def mutations(size: int) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    """Edits of a file of `size` bytes: (replace, position, byte), (delete, position, length)
    or (insert, position, byte)."""
    edit = st.tuples(st.sampled_from(["replace", "delete", "insert"]), st.integers(0, max(size - 1, 0)),
                     st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=6)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        pos = min(pos, len(buf))
        if kind == "replace" and pos < len(buf):
            buf[pos] = value
        elif kind == "delete":
            del buf[pos:pos + 1 + value % 16]
        else:
            buf[pos:pos] = bytes([value])
    return bytes(buf)


# --- CIFAR pickles -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp), images_per_class_train=2, images_per_class_test=1)
        yield Path(tmp)


def load_cifar_with(root: Path, name: str, content: bytes) -> Any:
    """CIFAR-10 from `root` with the file `name` replaced by `content` (restored afterwards)."""
    path = root / "cifar-10-batches-py" / name
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        return loads_or_bbn_error(lambda: load_source(DataConfig(source="cifar10", root=str(root))))
    finally:
        path.write_bytes(original)


CIFAR_FILES = st.sampled_from(["data_batch_1", "test_batch", "batches.meta"])


@FUZZ
@given(name=CIFAR_FILES, content=st.binary(max_size=3000))
def test_cifar_random_bytes(cifar_root: Path, name: str, content: bytes) -> None:
    assert load_cifar_with(cifar_root, name, content) is None


@FUZZ
@given(name=CIFAR_FILES, cut=st.floats(0.0, 0.999))
def test_cifar_truncated(cifar_root: Path, name: str, cut: float) -> None:
    whole = (cifar_root / "cifar-10-batches-py" / name).read_bytes()
    assert load_cifar_with(cifar_root, name, whole[: int(len(whole) * cut)]) is None


@FUZZ
@given(name=CIFAR_FILES, edits=mutations(4000))
def test_cifar_mutated(cifar_root: Path, name: str, edits: list[tuple[str, int, int]]) -> None:
    whole = (cifar_root / "cifar-10-batches-py" / name).read_bytes()
    load_cifar_with(cifar_root, name, mutate(whole, edits))


_KEYS = st.sampled_from([b"data", b"labels", b"label_names", b"batch_label", b"filenames", "data", "labels", 1])
_ARRAYS = hnp.arrays(dtype=st.sampled_from([np.uint8, np.int64, np.int8, np.float32, np.bool_]),
                     shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
_PIXEL_ROWS = st.integers(0, 4).map(lambda n: np.zeros((n, 3072), np.uint8))
_LEAVES = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.binary(max_size=8)
           | st.text(st.characters(max_codepoint=255), max_size=8) | _ARRAYS | _PIXEL_ROWS)  # Python 2 str: latin-1
_TREES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
                      max_leaves=12)


@FUZZ
@given(name=CIFAR_FILES, obj=st.dictionaries(_KEYS, _TREES, max_size=5) | _TREES, py2=st.booleans())
def test_cifar_random_structures_in_the_real_format(cifar_root: Path, name: str, obj: Any, py2: bool) -> None:
    buf = io.BytesIO()
    if py2:
        Py2Pickler(buf).dump(obj)
    else:
        pickle.dump(obj, buf)
    load_cifar_with(cifar_root, name, buf.getvalue())


# --- configs -------------------------------------------------------------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**22) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
_CONFIG_KEYS = st.sampled_from([k for k in valid_keys() if "." in k]) | st.text(max_size=12)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        _set_dotted(tree, key, value)
    return tree


def validate_fully(tree: dict[str, Any], overrides: list[str] = ()) -> None:
    """What `bbn train` does with a config before reading any data."""
    cfg = build_config(tree, overrides)
    check_schedule(cfg, [parse_override(o)[0] for o in overrides])
    check_names(cfg)


@FUZZ
@given(flat=st.dictionaries(_CONFIG_KEYS, _VALUES, max_size=6))
def test_random_config_mappings(flat: dict[str, Any]) -> None:
    loads_or_bbn_error(lambda: validate_fully(nested(flat)))


@FUZZ
@given(overrides=st.lists(st.tuples(_CONFIG_KEYS, st.text(max_size=16)).map("=".join)
                          | st.text(max_size=20), max_size=4))
def test_random_overrides(overrides: list[str]) -> None:
    loads_or_bbn_error(lambda: validate_fully({}, overrides))


_YAMLISH = st.text(alphabet=st.sampled_from(list("abtrain.epochs:lr-[]{}!&*#|>'\"\n\t ,0123456789%@`?=\\~")),
                   max_size=80)


@FUZZ
@given(text=_YAMLISH | st.text(max_size=60) | st.binary(max_size=60)
       | st.dictionaries(_CONFIG_KEYS, _VALUES, max_size=4).map(lambda d: yaml.safe_dump(nested(d))))
def test_random_yaml_files(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        loads_or_bbn_error(lambda: validate_fully(read_yaml(path)))


# --- user arrays (.npz) --------------------------------------------------------------------

_ANY_ARRAY = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int64, np.int8, np.float32, np.float64, np.bool_,
                           np.dtype("<U3"), np.dtype("S2"), np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
_VALID = valid_arrays()


@FUZZ
@given(arrays=st.fixed_dictionaries({k: st.just(v) | _ANY_ARRAY | st.none() for k, v in _VALID.items()}),
       extra=st.dictionaries(st.sampled_from(["X_train", "labels", "y"]), _ANY_ARRAY, max_size=2))
def test_random_npz_contents(arrays: dict[str, np.ndarray | None], extra: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        np.savez(path, **{k: v for k, v in {**arrays, **extra}.items() if v is not None})
        splits = loads_or_bbn_error(lambda: load_arrays_file(path))
    if splits is not None:  # what loads is well formed
        assert splits.train.images.dtype == torch.uint8 and splits.train.images.dim() == 4
        assert int(splits.train.labels.max()) < splits.train.num_classes


@pytest.fixture(scope="module")
def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **_VALID)
    return buf.getvalue()


@FUZZ
@given(content=st.binary(max_size=2000) | st.just(b"PK\x03\x04") | st.just(b"\x93NUMPY"), edits=mutations(20000),
       how=st.sampled_from(["random", "cut", "mutated"]))
def test_random_npz_bytes(npz_bytes: bytes, content: bytes, edits: list[tuple[str, int, int]], how: str) -> None:
    data = {"random": content, "cut": npz_bytes[: len(content) * 9], "mutated": mutate(npz_bytes, edits)}[how]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        path.write_bytes(data)
        loads_or_bbn_error(lambda: load_arrays_file(path))


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        save_checkpoint({"format": 2, "config": Config().to_dict(), "epoch": 1,
                         "model": {"w": torch.arange(6.0).reshape(2, 3)}}, path)
        return path.read_bytes()


@FUZZ
@given(content=st.binary(max_size=2000), edits=mutations(4000), how=st.sampled_from(["random", "cut", "mutated"]))
def test_random_checkpoint_bytes(checkpoint_bytes: bytes, content: bytes, edits: list[tuple[str, int, int]],
                                 how: str) -> None:
    data = {"random": content, "cut": checkpoint_bytes[: len(content)],
            "mutated": mutate(checkpoint_bytes, edits)}[how]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        path.write_bytes(data)
        payload = loads_or_bbn_error(lambda: load_checkpoint(path))
    if payload is not None:
        assert isinstance(payload, dict) and "model" in payload and "config" in payload


@FUZZ
@given(obj=_TREES)
def test_random_pickles_as_checkpoints(obj: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        loads_or_bbn_error(lambda: load_checkpoint(path))


# --- image-file sources: iNaturalist JSON and image lists -------------------------------------


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    """Two classes of two images each, under <tmp>/imgs."""
    with tempfile.TemporaryDirectory() as tmp:
        image_folder(Path(tmp) / "imgs", [2, 2])
        yield Path(tmp)


def load_files(root: Path, source: str, train_text: str | bytes, test_text: str | bytes) -> Any:
    """The image-file source `source` reading train/test annotation files with these contents."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, text in (("train", train_text), ("test", test_text)):
            path = Path(tmp) / name
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
            files.append(str(path))
        cfg = DataConfig(source=source, root=str(root / "imgs"), train_file=files[0], test_file=files[1])
        return loads_or_bbn_error(lambda: load_source(cfg))


_VALID_INAT = inat_original([("class0/000.jpg", 7), ("class0/001.jpg", 7), ("class1/000.jpg", 9),
                             ("class1/001.jpg", 9)], [7, 9])
_JSON_KEYS = st.sampled_from(["images", "annotations", "categories", "id", "file_name", "image_id", "category_id",
                              "name", "num_classes", "width", "height"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10) | st.sampled_from(["class0/000.jpg", "class1/001.jpg", "../x.jpg", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_KEYS, inner, max_size=5), max_leaves=20)


def _replace_at(obj: Any, path: list[int], value: Any) -> Any:
    """`obj` with the node reached by walking `path` (indices into dict values / list items) replaced."""
    if not path or not isinstance(obj, (dict, list)) or not obj:
        return value
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    key = keys[path[0] % len(keys)]
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[key] = _replace_at(obj[key], path[1:], value)
    return copy


_VALID_CONVERTED = {"annotations": [{"image_id": k, "fpath": f, "im_height": 20, "im_width": 24, "category_id": c}
                                     for k, (f, c) in enumerate([("class0/000.jpg", 0), ("class0/001.jpg", 0),
                                                                 ("class1/000.jpg", 1), ("class1/001.jpg", 1)])],
                    "num_classes": 2}


@FUZZ
@given(how=st.sampled_from(["random", "edited", "text"]), base=st.sampled_from([_VALID_INAT, _VALID_CONVERTED]),
       obj=_JSON | st.integers(-2, 10**15), path=st.lists(st.integers(0, 50), max_size=4), text=st.text(max_size=60))
def test_random_inat_json(images: Path, how: str, base: dict, obj: Any, path: list[int], text: str) -> None:
    """Random JSON, the valid file (original or converted) with one node replaced, or text."""
    train = {"random": json.dumps(obj), "edited": json.dumps(_replace_at(base, path, obj)), "text": text}[how]
    load_files(images, "inat2018", train, json.dumps(base))


_LIST_TOKENS = st.sampled_from(["class0/000.jpg", "class1/001.jpg", "gone.jpg", "0", "1", "-1", "7", "99999999999",
                                "x", "1.5", "", " ", "\t", "#", "a b c"])


@FUZZ
@given(lines=st.lists(st.lists(_LIST_TOKENS, max_size=3).map(" ".join) | st.text(max_size=20), max_size=6),
       edit=st.tuples(st.integers(0, 3), st.integers(0, 1), _LIST_TOKENS), raw=st.binary(max_size=40),
       how=st.sampled_from(["lines", "edited", "raw"]))
def test_random_image_lists(images: Path, lines: list[str], edit: tuple[int, int, str], raw: bytes, how: str) -> None:
    """Random lines, the valid list with one token replaced, or random bytes."""
    rows = [["class0/000.jpg", "0"], ["class0/001.jpg", "0"], ["class1/000.jpg", "1"], ["class1/001.jpg", "1"]]
    rows[edit[0]][edit[1]] = edit[2]
    edited = "".join(" ".join(row) + "\n" for row in rows)
    valid = "class0/000.jpg 0\nclass1/000.jpg 1\n"
    load_files(images, "image_list", {"lines": "\n".join(lines), "edited": edited, "raw": raw}[how], valid)

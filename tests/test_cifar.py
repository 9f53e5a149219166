"""CIFAR sources: the real Python-2 pickle format, restricted unpickling, errors, download."""

from __future__ import annotations

import pickle
import re
import struct
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from cifar_format import (
    CIFAR10_NAMES,
    CIFAR100_FINE_NAMES,
    dump_pickle,
    make_tar_gz,
    write_cifar10,
    write_cifar100,
)

from bbn.config import DataConfig
from bbn.data import cifar
from bbn.data.download import download_and_extract, file_md5
from bbn.data.sources import Splits, load_source
from bbn.errors import BBNError

C10_TRAIN, C10_TEST = 12, 4  # images per class
C100_TRAIN, C100_TEST = 3, 1


def known_image() -> np.ndarray:
    """A (32, 32, 3) RGB image whose three channels are different, recognisable ramps."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([(y * 32 + x) % 256, x * 8, 255 - y * 8], axis=-1).astype(np.uint8)


def read_latin1(path: Path) -> dict:
    """A fixture file as the reference reads it (str keys)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load(source: str, root: Path, **kw: object) -> Splits:
    return load_source(DataConfig(source=source, root=str(root), **kw))


@contextmanager
def raises_one_line(*parts: str) -> Iterator[pytest.ExceptionInfo[BBNError]]:
    """pytest.raises for a one-line BBNError holding these literal parts, in order."""
    with pytest.raises(BBNError, match=".*".join(re.escape(p) for p in parts)) as info:
        yield info
    assert "\n" not in str(info.value)


@pytest.fixture
def c10(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path, C10_TRAIN, C10_TEST, known_image=known_image())


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_loads_with_both_key_encodings(tmp_path: Path, py2: bool) -> None:
    folder = write_cifar10(tmp_path, C10_TRAIN, C10_TEST, py2=py2, known_image=known_image())
    for root in (tmp_path, folder):  # the parent folder or the batches folder itself
        splits = load("cifar10", root)
        assert splits.train.images.shape == (10 * C10_TRAIN, 3, 32, 32)
        assert splits.test.images.shape == (10 * C10_TEST, 3, 32, 32)
        assert splits.train.images.dtype == torch.uint8
        assert splits.train.labels.dtype == torch.int64
        assert splits.train.class_names == CIFAR10_NAMES
        assert splits.train.class_counts() == [C10_TRAIN] * 10
        assert splits.test.class_counts() == [C10_TEST] * 10
        assert splits.mean == (0.4914, 0.4822, 0.4465)
        assert splits.std == (0.2023, 0.1994, 0.2010)
    image = splits.train.images[0].numpy()
    expected = known_image()
    for channel in range(3):  # channel 0 = red plane, 1 = green, 2 = blue
        np.testing.assert_array_equal(image[channel], expected[:, :, channel])


@pytest.mark.parametrize("py2", [True, False])
def test_cifar100_loads_fine_labels(tmp_path: Path, py2: bool) -> None:
    folder = write_cifar100(tmp_path, C100_TRAIN, C100_TEST, py2=py2, known_image=known_image())
    splits = load("cifar100", tmp_path)
    assert splits.train.images.shape == (100 * C100_TRAIN, 3, 32, 32)
    assert splits.test.images.shape == (100 * C100_TEST, 3, 32, 32)
    assert splits.train.class_names == CIFAR100_FINE_NAMES
    assert splits.train.class_counts() == [C100_TRAIN] * 100
    raw = read_latin1(folder / "train")
    assert splits.train.labels.tolist() == raw["fine_labels"]
    np.testing.assert_array_equal(splits.train.images[0].permute(1, 2, 0).numpy(), known_image())


def test_fixture_is_the_python2_format(c10: Path) -> None:
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        with open(c10 / name, "rb") as f:
            as_str = pickle.load(f, encoding="latin1")
        with open(c10 / name, "rb") as f:
            as_bytes = pickle.load(f, encoding="bytes")
        assert all(isinstance(k, str) for k in as_str)
        assert all(isinstance(k, bytes) for k in as_bytes)
    assert as_bytes[b"label_names"][0] == b"airplane"
    raw = (c10 / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}")  # protocol 2, a dict
    assert b"U\x04data" in raw  # a Python-2 str key (SHORT_BINSTRING)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw


def test_python3_fixture_has_str_keys(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, 1, 1, py2=False)
    with open(folder / "data_batch_1", "rb") as f:
        assert all(isinstance(k, str) for k in pickle.load(f, encoding="bytes"))


def test_protocol5_arrays_load(c10: Path) -> None:
    batch = read_latin1(c10 / "data_batch_1")
    with open(c10 / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=5)  # arrays via numpy's _frombuffer
    assert load("cifar10", c10).train.images.shape[0] == 10 * C10_TRAIN


def repickle(folder: Path, protocol: int) -> list[Path]:
    """Load every file of a CIFAR folder and write it again as Python 3 does at `protocol`,
    each batch with one extra empty byte string (which protocol 2 writes as `bytes()`)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
        with open(path, "wb") as f:
            pickle.dump({**obj, b"empty": b""}, f, protocol=protocol)
    return files


@pytest.mark.parametrize("py2", [True, False])
def test_python3_protocol2_pickles_load(tmp_path: Path, py2: bool) -> None:
    """Python 3 writes bytes at protocol 2 as `_codecs.encode(str, 'latin1')` (the pixels,
    and with bytes keys the keys and names too) and b"" as `__builtin__.bytes()`."""
    folder = write_cifar10(tmp_path / "c10", C10_TRAIN, C10_TEST, py2=py2, known_image=known_image())
    expected = load("cifar10", folder)
    for path in repickle(folder, protocol=2):
        raw = path.read_bytes()
        assert raw.startswith(b"\x80\x02") and b"c_codecs\nencode\n" in raw and b"c__builtin__\nbytes\n" in raw
    splits = load("cifar10", folder)
    assert splits.train.class_names == CIFAR10_NAMES
    for got, want in ((splits.train, expected.train), (splits.test, expected.test)):
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    c100 = write_cifar100(tmp_path / "c100", C100_TRAIN, C100_TEST, py2=py2, known_image=known_image())
    repickle(c100, protocol=2)
    splits = load("cifar100", c100)
    assert splits.train.class_names == CIFAR100_FINE_NAMES
    np.testing.assert_array_equal(splits.train.images[0].permute(1, 2, 0).numpy(), known_image())


def _call(module: str, name: str, *args: str | int) -> bytes:
    """A protocol-2 pickle calling module.name(*args) (str or int arguments)."""
    out = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"("
    for arg in args:
        if isinstance(arg, int):
            out += b"\x8a" + bytes([(arg.bit_length() + 8) // 8]) + arg.to_bytes((arg.bit_length() + 8) // 8, "little")
        else:
            out += b"X" + struct.pack("<I", len(arg.encode())) + arg.encode()
    return out + b"tR."


@pytest.mark.parametrize("payload,refusal", [
    (_call("_codecs", "encode", "x" * 8, "zlib_codec"), "_codecs.encode(str, 'zlib_codec')"),
    (_call("_codecs", "encode", "6f73", "hex"), "_codecs.encode(str, 'hex')"),
    (_call("_codecs", "encode", 10**6, "latin1"), "_codecs.encode(int, 'latin1')"),
    (_call("__builtin__", "bytes", 10**12), "bytes() with 1 argument(s)"),
    (_call("builtins", "bytes", "abc", "latin1"), "bytes() with 2 argument(s)"),
    (_call("_codecs", "decode", "x", "latin1"), "global '_codecs.decode'"),
    (_call("_codecs", "lookup", "latin1"), "global '_codecs.lookup'"),
    (_call("codecs", "encode", "x", "latin1"), "global 'codecs.encode'"),
    (_call("__builtin__", "bytearray", 10**12), "global '__builtin__.bytearray'"),
    (_call("__builtin__", "eval", "__import__('os').system('touch pwned')"), "global '__builtin__.eval'"),
], ids=["zlib", "hex", "int", "bytes-n", "bytes-str", "decode", "lookup", "codecs", "bytearray", "eval"])
def test_bytes_rebuilding_admits_nothing_more(c10: Path, payload: bytes, refusal: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only `_codecs.encode(str, 'latin1')` and `bytes()` are admitted: other encodings,
    arguments (bytes(10**12) would allocate a terabyte) and other codec functions are refused."""
    monkeypatch.chdir(c10)
    (c10 / "batches.meta").write_bytes(payload)
    with raises_one_line(f"'{c10 / 'batches.meta'}' refuses", refusal, "not a CIFAR batch"):
        load("cifar10", c10)
    assert not (c10 / "pwned").exists()


def _global_call(module: str, name: str, arg: str) -> bytes:
    """A pickle that calls module.name(arg) when loaded by an unrestricted unpickler."""
    text = arg.encode()
    return (
        b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(text))
        + text + b"\x85R."
    )


@pytest.mark.parametrize(
    "module,name",
    [("os", "system"), ("posix", "system"), ("builtins", "open"), ("numpy", "load"),
     ("numpy.core.multiarray", "frombuffer")],
)
def test_planted_globals_are_refused_and_never_run(
    c10: Path, tmp_path: Path, module: str, name: str
) -> None:
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if name == "system" else str(marker)
    batch = c10 / "data_batch_2"
    batch.write_bytes(_global_call(module, name, arg))
    with raises_one_line(f"'{batch}' refuses to load global '{module}.{name}'"):
        load("cifar10", c10)
    assert not marker.exists()


def test_planted_global_inside_a_valid_dict_is_refused(c10: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = (c10 / "batches.meta").read_bytes()
    # Same meta dict, with one extra value that would run os.system.
    evil = good[:-1] + b"U\x04evil" + _global_call("os", "system", f"touch {marker}")[2:-1] + b"s."
    (c10 / "batches.meta").write_bytes(evil)
    with raises_one_line("refuses to load global 'os.system'; the file is not a CIFAR batch"):
        load("cifar10", c10)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 1, 100, 5000])
def test_truncated_file_names_the_file(c10: Path, keep: int) -> None:
    path = c10 / "data_batch_3"
    path.write_bytes(path.read_bytes()[:keep])
    with raises_one_line(f"'{path}' is truncated or not a CIFAR pickle; re-download it"):
        load("cifar10", c10)


def test_garbage_file_names_the_file(c10: Path) -> None:
    path = c10 / "test_batch"
    path.write_bytes(b"this is not a pickle at all\n" * 10)
    with raises_one_line(f"'{path}' is truncated or not a CIFAR pickle"):
        load("cifar10", c10)


def test_root_not_set() -> None:
    with raises_one_line("data.root is not set; point it at the folder holding cifar-10-batches-py"):
        load_source(DataConfig(source="cifar10"))
    with raises_one_line("data.root is not set; data.download=true needs a folder"):
        load_source(DataConfig(source="cifar100", download=True))


def test_missing_root_folder_and_file(tmp_path: Path) -> None:
    with raises_one_line(f"data.root '{tmp_path / 'nope'}' does not exist", "data.download=true"):
        load("cifar10", tmp_path / "nope")
    with raises_one_line(f"'{tmp_path / 'cifar-100-python'}' not found", "data.download=true"):
        load("cifar100", tmp_path)
    folder = write_cifar100(tmp_path, 1, 1)
    (folder / "test").unlink()
    with raises_one_line(f"'{folder / 'test'}' not found"):
        load("cifar100", tmp_path)


def _rewrite(path: Path, **changes: object) -> None:
    batch = read_latin1(path)
    batch.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del batch[key]
    dump_pickle({k.encode(): v for k, v in batch.items()}, path)


@pytest.mark.parametrize("bad", [10, -1, 1000])
def test_label_out_of_range(c10: Path, bad: int) -> None:
    path = c10 / "data_batch_2"
    labels = read_latin1(path)["labels"]
    _rewrite(path, labels=[bad] + labels[1:])
    with raises_one_line(f"'{path}': label {bad} is outside [0, 10)"):
        load("cifar10", c10)


def test_cifar100_label_out_of_range(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path, 1, 1)
    labels = read_latin1(folder / "test")["fine_labels"]
    _rewrite(folder / "test", fine_labels=labels[:-1] + [100])
    with raises_one_line(f"'{folder / 'test'}': label 100 is outside [0, 100)"):
        load("cifar100", tmp_path)


def test_label_count_shape_and_missing_key(c10: Path) -> None:
    path = c10 / "data_batch_1"
    original = path.read_bytes()
    labels = read_latin1(path)["labels"]
    _rewrite(path, labels=labels[:-1])
    with raises_one_line(f"'{path}' has {len(labels) - 1} labels for {len(labels)} images"):
        load("cifar10", c10)
    path.write_bytes(original)
    _rewrite(path, data=np.zeros((len(labels), 32, 32, 3), np.uint8))
    with raises_one_line(f"'{path}': 'data' has shape", "expected N x 3072"):
        load("cifar10", c10)
    path.write_bytes(original)
    _rewrite(path, labels=None)
    with raises_one_line(f"'{path}' has no 'labels' entry"):
        load("cifar10", c10)


# --- download -----------------------------------------------------------------------


@pytest.fixture
def c10_archive(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    folder = write_cifar10(src, 2, 1)
    archive = make_tar_gz(folder, src / "cifar-10-python.tar.gz")
    return archive, file_md5(archive)


def test_download_and_extract(tmp_path: Path, c10_archive: tuple[Path, str]) -> None:
    archive, md5 = c10_archive
    dest = tmp_path / "data"
    got = download_and_extract(archive.as_uri(), dest, archive.name, md5)
    assert got == dest / archive.name and file_md5(got) == md5
    assert (dest / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py", archive.name]
    # Already there with the right md5: not fetched again (this URL would fail).
    missing_url = (tmp_path / "gone.tar.gz").as_uri()
    assert download_and_extract(missing_url, dest, archive.name, md5) == got


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, c10_archive: tuple[Path, str]) -> None:
    archive, md5 = c10_archive
    dest = tmp_path / "data"
    with raises_one_line(f"has md5 {md5}, expected {'0' * 32}"):
        download_and_extract(archive.as_uri(), dest, archive.name, "0" * 32)
    assert list(dest.iterdir()) == []


def test_download_network_error(tmp_path: Path) -> None:
    url = (tmp_path / "absent.tar.gz").as_uri()
    with raises_one_line(f"could not download {url}: ", f"download it by hand into {tmp_path / 'd'}"):
        download_and_extract(url, tmp_path / "d", "x.tar.gz", "0" * 32)
    assert list((tmp_path / "d").iterdir()) == []


def test_download_refuses_escaping_members(tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    dest = tmp_path / "data"
    with raises_one_line("unsafe member '../escaped.txt'"):
        download_and_extract(archive.as_uri(), dest, "evil.tar.gz", file_md5(archive))
    assert not (tmp_path / "escaped.txt").exists()


def test_download_true_end_to_end(
    tmp_path: Path, c10_archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = c10_archive
    monkeypatch.setattr(cifar, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    dest = tmp_path / "data"
    splits = load("cifar10", dest, download=True)
    assert splits.train.images.shape == (20, 3, 32, 32)
    assert (dest / "cifar-10-batches-py" / "batches.meta").is_file()

    # Files present: the download helper is not called at all.
    def no_fetch(*args: object) -> Path:
        raise AssertionError("downloaded although the files were there")

    monkeypatch.setattr(cifar, "download_and_extract", no_fetch)
    assert len(load("cifar10", dest, download=True).test) == 10

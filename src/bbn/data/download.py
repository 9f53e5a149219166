"""Fetch a dataset archive, check its md5 and unpack it safely.

Only used when a config asks for `data.download: true`; everything else reads files
the user already has. Any failure is a one-line `BBNError` that says what to do by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from bbn.errors import BBNError

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks (archives are hundreds of MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path) -> None:
    """Stream `url` to a temporary file next to `target`, then rename it into place.

    The rename means an interrupted download never leaves a half-written archive under
    the final name.
    """
    root = target.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=root)
    except OSError as exc:
        raise BBNError(f"cannot write into '{root}': {exc.strerror}; pick another data.root") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, _CHUNK)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise BBNError(
            f"could not download {url}: {reason}; download it by hand into {root}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_members(tar: tarfile.TarFile, archive: Path, root: Path) -> None:
    """Refuse members that would land outside `root` (absolute paths, `..`, links)."""
    base = root.resolve()
    for member in tar.getmembers():
        dest = (base / member.name).resolve()
        escapes = os.path.isabs(member.name) or not dest.is_relative_to(base)
        if member.issym() or member.islnk():
            # Symlinks resolve from the member's folder, hard links from the archive root.
            link = ((dest.parent if member.issym() else base) / member.linkname).resolve()
            escapes = escapes or os.path.isabs(member.linkname) or not link.is_relative_to(base)
        if escapes or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise BBNError(
                f"'{archive}' holds the unsafe member '{member.name}' (outside {root} or not a "
                f"plain file); refusing to extract it, delete the archive and download it again"
            )


def extract_archive(archive: Path, root: Path) -> None:
    """Unpack a tar(.gz) into `root`, refusing members that escape it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            _check_members(tar, archive, root)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # Python without extraction filters: members were checked above.
                tar.extractall(root)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BBNError(
            f"could not extract '{archive}' ({exc}); delete it and download it again"
        ) from None


def download_and_extract(url: str, root: Path, filename: str, md5: str) -> Path:
    """Make sure `root/filename` holds the archive with this `md5`, then unpack it into `root`.

    The fetch is skipped when a file with the right md5 is already there. A wrong md5
    after fetching deletes the file and fails, naming both digests. Returns the archive path.
    """
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BBNError(f"cannot create download folder '{root}': {exc.strerror}; pick another data.root") from None
    archive = root / filename
    if not (archive.is_file() and file_md5(archive) == md5):
        _fetch(url, archive)
        actual = file_md5(archive)
        if actual != md5:
            archive.unlink(missing_ok=True)
            raise BBNError(
                f"'{archive}' downloaded from {url} has md5 {actual}, expected {md5}; the file "
                f"is corrupt or not the official archive and was deleted, try again"
            )
    extract_archive(archive, root)
    return archive

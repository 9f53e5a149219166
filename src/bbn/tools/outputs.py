"""Where `bbn export`, `bbn import-reference` and `bbn predict --out` may write.

The rule: these commands write a new file or replace one of their own outputs, never a
run's state. `--out` is refused (one line, nothing written) when it
* lies inside the `checkpoints/` folder of a run (a folder whose parent holds config.yaml),
* is an existing file of a run folder (config.yaml, final.json, report.md, ...: a new file
  there is fine, `bbn export RUN --out RUN/model.onnx`),
* is an existing bbn checkpoint, wherever it lies,
* is the command's own input (the checkpoint it reads), or an existing folder.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable

from bbn.errors import BBNError
from bbn.engine.runs import RunDir

_PICKLE_LIMIT = 16 << 20  # a checkpoint's pickle holds names and numbers only; its tensors are separate


def is_bbn_checkpoint(path: Path) -> bool:
    """Whether `path` is a file `save_checkpoint` wrote (or a format-1 bbn state dict): a
    torch zip whose pickle names the checksummed container, or holds a model and its config.
    Only the pickle's bytes are read, never unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > _PICKLE_LIMIT:
                return False
            data = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return b"bbn_checkpoint" in data or (b"config" in data and b"model" in data and b"format" in data)


def _run_of_checkpoints(folder: Path) -> Path | None:
    """The run folder whose checkpoints/ folder `folder` is (or lies in), else None."""
    for parent in (folder, *folder.parents):
        if parent.name == "checkpoints" and RunDir(parent.parent).config.is_file():
            return parent.parent
    return None


def check_out(out: str | Path, inputs: Iterable[str | Path] = (), flag: str = "--out") -> Path:
    """`out` as a Path when the command may write it (see the module's rule), else BBNError."""
    out = Path(out)
    target = out.resolve()  # symbolic links followed: a link into a run is still the run
    run = _run_of_checkpoints(target.parent)
    if run is not None:
        raise BBNError(f"{flag} '{out}' is inside the checkpoints folder of run '{run}'; only bbn train writes "
                       f"there, choose a file outside it")
    if target.is_file() and RunDir(target.parent).config.is_file():
        raise BBNError(f"{flag} '{out}' is an existing file of run '{target.parent}' and would be replaced; "
                       f"choose a new file name")
    if out.is_dir():
        raise BBNError(f"{flag} '{out}' is a folder; give a file name")
    if not out.exists():
        return out
    for source in map(Path, inputs):
        if source.exists() and os.path.samefile(out, source):
            raise BBNError(f"{flag} '{out}' is the input file itself; write to another file")
    if is_bbn_checkpoint(out):
        raise BBNError(f"{flag} '{out}' is an existing bbn checkpoint and would be replaced; choose another "
                       f"file name, or delete it first if it is no longer needed")
    return out

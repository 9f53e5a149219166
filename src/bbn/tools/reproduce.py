"""`bbn reproduce CONFIG_GLOB ... --seeds N`: run a set of presets over seeds (resumable),
then write one table in the layout of the paper's Table 1 with its numbers beside ours."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

from bbn.config import Config, build_config, load_config, parse_override, preset_names, read_config
from bbn.errors import BBNError, quote
from bbn.tools.paper import METHOD_LABELS, method_label, paper_error
from bbn.readers import override_keys, unread_reason
from bbn.tools.runner import continue_run
from bbn.engine.runs import write_json
from bbn.engine.session import check_names

SOURCE_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits"}


@dataclass(frozen=True)
class Job:
    """One training run of the plan: a config, its variant overrides and a seed."""

    config: str
    variant: tuple[str, ...]
    overrides: tuple[str, ...]
    seed: int
    folder: Path

    def build(self, warn: Callable[[str], None] = lambda message: None) -> Config:
        return load_config(self.config, [*self.overrides, *self.variant, f"seed={self.seed}"], warn=warn)


def expand_configs(patterns: Sequence[str]) -> list[str]:
    """Preset names or YAML paths matching each pattern (shell-style), in a stable order."""
    found: list[str] = []
    for pattern in patterns:
        stem = Path(pattern).name.removesuffix(".yaml")
        matches = [p for p in preset_names() if fnmatch.fnmatch(p, stem)] if Path(pattern).parent in (
            Path("."), Path("configs")) else []
        matches += sorted(str(p) for p in Path().glob(pattern) if p.is_file() and p.suffix == ".yaml"
                          and p.stem not in matches)
        if not matches:
            raise BBNError(f"no config matches '{pattern}'; presets: {', '.join(preset_names())}")
        found += [m for m in matches if m not in found]
    return found


def parse_grid(items: Sequence[str]) -> list[tuple[str, ...]]:
    """['method.adaptor=equal,beta'] -> every combination as override tuples ([()] if none)."""
    axes = []
    for item in items:
        key, value = item.split("=", 1) if "=" in item else (item, "")
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not key.strip() or not values:
            raise BBNError(f"--grid '{item}' is not key=v1,v2,... (e.g. method.adaptor=equal,beta)")
        axes.append([f"{key.strip()}={v}" for v in values])
    return [tuple(combo) for combo in itertools.product(*axes)]


def read_overrides(config: str, variant: tuple[str, ...], overrides: Sequence[str]) -> dict[str, str | None]:
    """Each override -> None when the run of `config` (with `variant`) reads every key it
    sets, else why not (the first key it does not read)."""
    cfg = build_config(read_config(config)[0], [*overrides, *variant])
    return {text: next(filter(None, (unread_reason(cfg, key) for key in override_keys(*parse_override(text)))), None)
            for text in overrides}


def plan(patterns: Sequence[str], seeds: int, overrides: Sequence[str], grid: Sequence[str],
         out: Path, warn: Callable[[str], None] = print) -> list[Job]:
    """Every run to make, each validated now (a bad key fails before anything trains). An
    override applies to the configs that read it (`override_notes` says which); one that no
    config reads is an error."""
    if seeds < 1:
        raise BBNError(f"--seeds must be at least 1, got {seeds}")
    for text in overrides:
        parse_override(text)
    jobs, unread = [], {text: "" for text in overrides}
    warnings: dict[str, None] = {}
    for config in expand_configs(patterns):
        for variant in parse_grid(grid):
            name = Path(config).stem + "".join(f"-{v.replace('.', '_')}" for v in variant)
            reasons = read_overrides(config, variant, overrides)
            read = tuple(text for text in overrides if reasons[text] is None)
            for text in read:
                unread.pop(text, None)
            for text in unread:
                unread[text] = unread[text] or f"{reasons[text]} (e.g. {Path(config).stem})"
            for seed in range(seeds):
                job = Job(config, variant, read, seed, out / name / f"seed{seed}")
                check_names(job.build(warn=lambda message: warnings.setdefault(message)))
                jobs.append(job)
    for text, reason in unread.items():
        raise BBNError(f"override '{quote(text)}' is read by none of the matched configs: {reason}")
    for message in warnings:
        warn(f"bbn: warning: {message}")
    return jobs


def override_notes(jobs: list[Job], overrides: Sequence[str]) -> list[str]:
    """One note per override that applies to some of the configs only, naming them."""
    notes = []
    for text in overrides:
        applied = list(dict.fromkeys(Path(job.config).stem for job in jobs if text in job.overrides))
        if len(applied) < len({job.config for job in jobs}):
            notes.append(f"`{text}` applies only to {', '.join(applied)} (the other configs do not read it).")
    return notes


# Beside each run's final.json: the wall-clock seconds of the reproduce call that finished it.
WALL_RECORD = "reproduce.json"


def run_job(job: Job, log: Callable[[str], None] = print, progress: bool = False) -> dict[str, Any]:
    """Run (or resume, or reuse) one job's folder; its final.json as a dict, with `wall_s`: the
    wall-clock seconds of the call that finished the run (kept in RUN/reproduce.json, so a
    reused run keeps its own; a resumed run counts its last part only)."""
    record = job.folder / WALL_RECORD
    start = time.perf_counter()
    final = dict(continue_run(job.build(), job.folder, progress=progress, log=log)[1])
    if final and not record.is_file():
        write_json(record, {"wall_s": round(time.perf_counter() - start, 3)})
    try:
        final["wall_s"] = json.loads(record.read_text())["wall_s"]
    except (OSError, ValueError, KeyError, TypeError):
        final["wall_s"] = None
    return final


def _worker(job: Job, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return run_job(job, log=lambda line: None)


def run_all(jobs: list[Job], workers: int = 1, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every job, `workers` at a time (each with an equal share of the CPU threads)."""
    finals: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1:
        for i, job in enumerate(jobs):
            finals[i] = run_job(job, log=lambda line: None, progress=sys.stderr.isatty())
            log(_done_line(i, jobs, finals[i]))
        return finals  # type: ignore[return-value]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_worker, job, threads): i for i, job in enumerate(jobs)}
        for future in futures:
            i = futures[future]
            finals[i] = future.result()
            log(_done_line(i, jobs, finals[i]))
    return finals  # type: ignore[return-value]


def _done_line(i: int, jobs: list[Job], final: dict[str, Any]) -> str:
    return (f"[{i + 1}/{len(jobs)}] {jobs[i].folder}: top-1 {final['top1']:.2f}%  "
            f"({final.get('train_s', 0.0):.0f} s training)")


# --- the table -------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> str:
    """`mean ± sample std` over seeds (None values left out; `n/a` when none is left)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def summarize(jobs: list[Job], finals: list[dict[str, Any]], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Group finals by row (method and variant) and column (dataset, imbalance ratio);
    `notes` (e.g. `override_notes`) go with them."""
    notes = list(notes)
    rows: dict[str, dict[str, Any]] = {}
    columns: list[str] = []
    for job, final in zip(jobs, finals):
        cfg = job.build()
        column = f"{SOURCE_LABELS.get(cfg.data.source, cfg.data.source)} IR{cfg.data.imbalance_ratio:g}"
        if column not in columns:
            columns.append(column)
        label = method_label(cfg.method.name) + (f" ({', '.join(job.variant)})" if job.variant else "")
        row = rows.setdefault(label, {"method": cfg.method.name, "cells": {}})
        cell = row["cells"].setdefault(column, {"paper": None, "runs": []})
        if not job.variant:
            cell["paper"] = paper_error(cfg.method.name, cfg.data.source, cfg.data.imbalance_ratio)
        cell["runs"].append({k: final.get(k) for k in ("top1", "error", "best_top1", "many", "medium", "few")}
                            | {"seed": job.seed, "folder": str(job.folder),
                               "selection": final.get("selection") or "test"}
                            | {k: final.get(k) for k in ("commit", "device", "train_s", "wall_s")})
    order = list(METHOD_LABELS)  # the paper's row order; variants keep their planned order
    ranked = sorted(enumerate(rows.items()), key=lambda item: (
        order.index(item[1][1]["method"]) if item[1][1]["method"] in order else len(order), item[0]))
    return {"columns": columns, "rows": dict(row for _, row in ranked), "notes": notes}


def _table(summary: dict[str, Any], value: Callable[[dict[str, Any]], float | None],
           with_paper: bool) -> list[str]:
    cols = summary["columns"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, row in summary["rows"].items():
        cells = []
        for col in cols:
            cell = row["cells"].get(col)
            if cell is None:
                cells.append("")
                continue
            text = mean_std([value(r) for r in cell["runs"]])
            if with_paper:
                text += f" ({cell['paper']:.2f})" if cell["paper"] is not None else " (—)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _error(r: dict[str, Any]) -> float | None:
    return None if r["top1"] is None else 100.0 - r["top1"]


def _best_error(r: dict[str, Any]) -> float | None:
    return None if r["best_top1"] is None else 100.0 - r["best_top1"]


# How the best epoch was chosen (final.json `selection`; runs before it was recorded: test).
SELECTED_ON = {"test": "chosen on the test set (selection: test, the reference's protocol)",
               "val": "chosen on a validation split held out of the training set (selection: val)"}


def selected_on(summary: dict[str, Any]) -> str:
    """The best-epoch table's protocol, from every run of the summary."""
    found = {r["selection"] for row in summary["rows"].values() for cell in row["cells"].values()
             for r in cell["runs"]}
    if len(found) == 1:
        return SELECTED_ON.get(found.pop(), "chosen per run")
    return "chosen per run on the test set or a validation split (selection: " + "/".join(sorted(found)) + \
        "; see the runs table)"


def render(summary: dict[str, Any], seeds: int, command: str) -> str:
    """The Markdown report: errors beside the paper's, best-epoch errors, shot groups."""
    out = [
        "# Reproduction of the paper's comparison",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}. Seeds: {seeds}; every cell is mean ± std over seeds.",
        *(f"Note: {note}" for note in summary.get("notes", [])),
        "",
        "## Top-1 error % at the last epoch (the paper's number in parentheses)",
        "",
        *_table(summary, _error, with_paper=True),
        "",
        f"## Top-1 error % at the best epoch, {selected_on(summary)} (the reference reports this one)",
        "",
        *_table(summary, _best_error, with_paper=True),
    ]
    for group in ("many", "medium", "few"):
        out += ["", f"## {group.capitalize()}-shot accuracy % at the last epoch", "",
                *_table(summary, lambda r, g=group: r[g], with_paper=False)]
    return "\n".join(out + ["", *_provenance(summary)]) + "\n"


def _provenance(summary: dict[str, Any]) -> list[str]:
    """Every run of every cell: its seed, the bbn commit, the device and the times."""
    lines = ["## Runs (seed, the split the best epoch was chosen on, bbn commit, device, wall-clock and training seconds)", "",
             "| method | column | seed | top-1 % | selection | commit | device | wall s | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, row in summary["rows"].items():
        for column, cell in row["cells"].items():
            for r in cell["runs"]:
                secs = [f"{r[k]:.0f}" if isinstance(r.get(k), (int, float)) else "n/a" for k in ("wall_s", "train_s")]
                top1 = f"{r['top1']:.2f}" if r.get("top1") is not None else "n/a"
                lines.append(f"| {label} | {column} | {r['seed']} | {top1} | {r.get('selection', 'test')} | "
                             f"{(r.get('commit') or 'n/a')[:12]}"
                             f"{'+dirty' if str(r.get('commit')).endswith('+dirty') else ''} | "
                             f"{r.get('device') or 'n/a'} | {secs[0]} | {secs[1]} |")
    return lines


def reproduce(patterns: Sequence[str], seeds: int, overrides: Sequence[str], grid: Sequence[str],
              out: str | Path, workers: int = 1, command: str = "bbn reproduce",
              log: Callable[[str], None] = print) -> Path:
    """Plan, run (skipping finished runs), and write OUT/results.md and OUT/results.json."""
    out = Path(out)
    jobs = plan(patterns, seeds, overrides, grid, out, warn=lambda line: print(line, file=sys.stderr))
    log(f"{len(jobs)} runs planned under {out}")
    finals = run_all(jobs, workers, log)
    summary = summarize(jobs, finals, override_notes(jobs, overrides))
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", summary)
        (out / "results.md").write_text(render(summary, seeds, command))
    except OSError as exc:
        raise BBNError(f"cannot write the results into '{out}' ({exc.strerror or exc}); "
                       "choose a writable --out") from None
    return out / "results.md"

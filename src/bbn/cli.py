"""`bbn train | eval | data`: wires config, data, trainer and evaluator together."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from bbn.errors import EXIT_BAD_INPUT, BBNError


def _split_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...] -> (config path or None, overrides)."""
    config, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            config = item
        else:
            raise BBNError(f"unexpected argument '{item}'; give one CONFIG first, then key=value overrides")
    return config, overrides


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _summary(result: dict[str, Any]) -> str:
    lines = [f"top-1 {_fmt(result['top1'])}   top-5 {_fmt(result['top5'])}   error {_fmt(result['error'])}"]
    if "best_top1" in result:
        lines[0] = "last epoch: " + lines[0]
        lines.append(f"best epoch: top-1 {_fmt(result['best_top1'])} at epoch {result['best_epoch']}")
    lines.append(f"many {_fmt(result['many'])}   medium {_fmt(result['medium'])}   few {_fmt(result['few'])}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from bbn.config import load_config
    from bbn.train import resume_run, start_run

    progress = not args.no_progress
    if args.resume:
        if args.items or args.out:
            raise BBNError("--resume continues a run with its saved config; drop CONFIG, overrides and --out")
        run, final = resume_run(args.resume, progress=progress)
    else:
        config, overrides = _split_args(args.items)
        cfg = load_config(config, overrides)
        run, final = start_run(cfg, args.out, progress=progress)
    print(_summary(final))
    print(f"run folder: {run.root}  (report: {run.root / 'report.md'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bbn.evaluate import eval_command

    result = eval_command(args.target, args.device)
    print(f"checkpoint {result['checkpoint']} (epoch {result['epoch']})")
    print(_summary(result))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from bbn.config import load_config
    from bbn.data.longtail import shot_group, shot_groups
    from bbn.data.prepare import prepare_data

    config, overrides = _split_args(args.items)
    cfg = load_config(config, overrides)
    data = prepare_data(cfg)
    counts, names = data.class_counts, data.train.class_names
    test_counts = data.test.class_counts()
    width = max(5, max(len(n) for n in names))
    print(f"{cfg.data.source}: {len(data.train)} training images, {len(data.test)} test images, "
          f"{len(counts)} classes, imbalance {max(counts) / min(counts):.1f} "
          f"({cfg.data.profile}, ratio {cfg.data.imbalance_ratio:g})")
    print(f"{'class':>5}  {'name':<{width}}  {'train':>6}  {'test':>5}  group")
    for c, n in enumerate(counts):
        print(f"{c:>5}  {names[c]:<{width}}  {n:>6}  {test_counts[c]:>5}  {shot_group(n)}")
    groups = shot_groups(counts)
    print("shot groups: " + ", ".join(
        f"{g} {len(ids)} classes / {sum(counts[i] for i in ids)} images" for g, ids in groups.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bbn import __version__

    parser = argparse.ArgumentParser(prog="bbn", description="BBN for long-tailed image recognition")
    parser.add_argument("--version", action="version", version=f"bbn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]",
                   help="a YAML config (default: the digits-LT BBN demo) and overrides")
    p.add_argument("--out", help="run folder to create (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a run folder (its best.pt) or a checkpoint")
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("data", help="class counts and shot groups of a config's training set")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BBNError as err:
        print(f"bbn: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bbn: interrupted", file=sys.stderr)
        return 130

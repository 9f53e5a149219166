"""`bbn train | eval | data | presets | config | reproduce | study | analyze | import-reference |
predict | export`:
wires config, data, trainer and evaluator together."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Callable, Sequence

from bbn.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, BBNError, Preempted


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


def _summary(result: dict[str, Any]) -> str:
    from bbn.engine.metrics import percent, summary_lines

    top, *rest = summary_lines(result)
    lines = [top]
    if "best_top1" in result:
        chosen = " (chosen on the validation split)" if result.get("selection") == "val" else ""
        lines = ["last epoch: " + top,
                 f"best epoch: top-1 {percent(result['best_top1'])} at epoch {result['best_epoch']}{chosen}"]
    return "\n".join([*lines, *rest])


def cmd_train(args: argparse.Namespace) -> int:
    from bbn.engine import preemption

    # SIGTERM / SIGINT from here on stop the run at the next step, or as soon as it starts
    # training, with last.pt written: exit EXIT_PREEMPTED. A finished run exits 0.
    from bbn.engine.distributed import close_world, world_from_env

    try:
        with preemption.stop_requests():
            return _train(args)
    finally:
        close_world(world_from_env())  # under torchrun: leave the process group


def _warning_log(pending: list[str], skip: str = "\0") -> Callable[[str], None]:
    """The run's log: its first line (written once the config and the data are validated and
    the run folder is made; lines starting with `skip` aside) is preceded by the config's
    warnings on stderr, so bad input still gets its one error line alone."""
    def log(line: str) -> None:
        while pending and not line.startswith(skip):
            print(f"bbn: warning: {pending.pop(0)}", file=sys.stderr)
        print(line)
    return log


def _train(args: argparse.Namespace) -> int:
    from bbn.config import load_config
    from bbn.tools.runner import continue_run, resume_run, start_run

    progress = not args.no_progress
    if args.precision and not (args.resume and args.resume != "auto"):
        raise BBNError("--precision changes the precision of a resumed run (bbn train --resume RUN --precision P); "
                       "a new run takes train.precision=P")
    if args.resume and args.resume != "auto":
        if args.items or args.out:
            raise BBNError("--resume continues a run with its saved config; drop CONFIG, overrides and --out")
        run, final = resume_run(args.resume, progress=progress, precision=args.precision)
    else:
        if args.resume == "auto" and not args.out:
            raise BBNError("--resume auto needs --out RUN: it continues, reuses or starts the run in that folder")
        config, overrides = _split_args(args.items)
        pending: list[str] = []
        cfg = load_config(config, [*overrides, *(["data.strict=true"] if args.strict else [])], warn=pending.append)
        if args.resume == "auto":
            run, final = continue_run(cfg, args.out, progress=progress, log=_warning_log(pending))
        else:
            run, final = start_run(cfg, args.out, progress=progress, log=_warning_log(pending))
    if not final:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print(_summary(final))
    print(f"run folder: {run.root}  (report: {run.root / 'report.md'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bbn.tools.adjust import format_adjusted
    from bbn.tools.evaluate import eval_command

    result = eval_command(args.target, args.device, args.branch, args.adjust, args.precision)
    branch = "" if result["branch"] == "all" else f", {result['branch']} alone"
    print(f"checkpoint {result['checkpoint']} (epoch {result['epoch']}{branch})")
    print(_summary(result))
    for line in format_adjusted(result.get("adjusted", {}), result["top1"]):
        print(line)
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    from bbn.tools.convert import import_reference

    stray = [item for item in args.items if "=" not in item]
    if stray:
        raise BBNError(f"unexpected argument '{stray[0]}'; give the config with --config and overrides as key=value")
    info = import_reference(args.checkpoint, args.out, args.model, args.num_classes, args.config, args.items,
                            args.class_names)
    best = f", best result {info['best_result']:.4g}" if isinstance(info.get("best_result"), float) else ""
    print(f"{info['model']}: {info['num_classes']} classes, {info['num_params']:,} parameters "
          f"(reference epoch {info.get('epoch')}{best})")
    data = "bbn eval and bbn predict use its config" if info["data_config"] else (
        "no data config: bbn predict and bbn export work; for bbn eval import again with --config CONFIG")
    print(f"written: {info['out']}  ({data})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bbn.tools.predict import format_table, predict_command

    results = predict_command(args.target, args.images, args.topk, args.out, args.device, args.precision)
    if args.out:
        print(f"{len(results)} images; written: {args.out}")
    else:
        print(format_table(results))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bbn.tools.export import export_model

    info = export_model(args.target, args.format, args.out)
    kind = {"onnx": f"onnx, {info.get('exporter')} exporter", "torchscript": "torchscript, legacy format",
            "safetensors": f"safetensors release file, weights and config, {info.get('size', 0) / 1e6:.2g} MB"}
    if info.get("fallback_reason"):
        print(f"bbn: warning: the dynamo ONNX exporter failed for this network ({info['fallback_reason']}); "
              "the TorchScript-based exporter wrote the file", file=sys.stderr)
    batch = "" if info["format"] == "safetensors" else " with any batch size"
    print(f"written: {info['out']} ({kind.get(info['format'], info['format'])}; input {tuple(info['input_shape'])}"
          f"{batch}; max |logit difference| to the checkpoint {info['max_abs_diff']:.2g})")
    return 0


def _labels(text: str | None, runs: Sequence[str]) -> list[str | None]:
    """--labels a,b,... (one per RUN); None where the run folder's name is to be used."""
    if text is None:
        return [None] * len(runs)
    labels = [label.strip() for label in text.split(",")]
    if len(labels) != len(runs) or not all(labels):
        raise BBNError(f"--labels '{text}' gives {len(labels)} labels for {len(runs)} runs; "
                       "give one non-empty label per RUN, comma-separated")
    return labels


def cmd_analyze_weight_norms(args: argparse.Namespace) -> int:
    import torch

    from bbn.tools.analysis import RunNorms, classifier_weight_norms, weight_norm_paths, write_weight_norms
    from bbn.engine.evaluate import load_run

    png, md = weight_norm_paths(args.out)
    runs = []
    for label, target in zip(_labels(args.labels, args.runs), args.runs):
        loaded = load_run(target, torch.device("cpu"))
        runs.append(RunNorms(label or loaded.run_root.resolve().name, classifier_weight_norms(loaded.model),
                             loaded.data.class_counts))
    print(write_weight_norms(png, runs), end="")
    print(f"written: {png} and {md}")
    return 0


def cmd_convert_inat(args: argparse.Namespace) -> int:
    from bbn.data.inat import convert_inat

    if len(args.items) != 3:
        raise BBNError("usage: bbn data convert-inat IN.json OUT.json [--root FOLDER]; give one input and one output file")
    written, images, classes = convert_inat(args.items[1], args.items[2], args.root)
    print(f"wrote {args.items[2]}: {images} images, {classes} classes ({written} format)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from bbn.config import load_config
    from bbn.engine.metrics import shot_group, shot_groups
    from bbn.data.prepare import prepare_data

    if args.items and args.items[0] == "convert-inat":
        return cmd_convert_inat(args)
    if args.root is not None:
        raise BBNError("--root belongs to bbn data convert-inat; set data.root=FOLDER for a config")
    config, overrides = _split_args(args.items)
    cfg = load_config(config, overrides, warn=lambda message: None)  # the data alone: no schedule
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


def cmd_presets(args: argparse.Namespace) -> int:
    from bbn.presets import describe, preset_names

    names = preset_names()
    width = max(len(name) for name in names)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from bbn.engine.budget import schedule_comment
    from bbn.config import dump_config, load_config

    config, overrides = _split_args(args.items)
    cfg = load_config(config, overrides)
    print(dump_config(cfg) + schedule_comment(cfg), end="")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from bbn.tools.reproduce import reproduce

    patterns = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if not patterns:
        raise BBNError("give at least one CONFIG_GLOB, e.g. bbn reproduce 'cifar10_ir100_*' --seeds 3")
    command = "bbn reproduce " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "bbn reproduce"
    path = reproduce(patterns, args.seeds, overrides, args.grid, args.out, args.jobs, command)
    print(path.read_text())
    print(f"written: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bbn.tools.compare import compare

    command = " ".join(["bbn compare", *args.items, *(["--out", args.out] if args.out else [])])
    text, written = compare(args.items, args.out, command=command)
    print(text, end="")
    if written:
        print("written: " + ", ".join(str(path) for path in written))
    return 0


def _taus(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise BBNError(f"--taus '{text}' is not a comma-separated list of numbers (e.g. 0,0.5,1)") from None


def cmd_study_retrain(args: argparse.Namespace) -> int:
    from bbn.tools.study import format_retrain, retrain_run

    result = retrain_run(args.run, args.rule, args.branch, args.epochs, _taus(args.taus), args.out)
    print(format_retrain(result))
    return 0


def cmd_study_two_stage(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bbn.config import load_config
    from bbn.tools.study import two_stage

    config, overrides = _split_args(args.items)
    pending: list[str] = []
    cfg = load_config(config, overrides, warn=pending.append)
    study = two_stage(cfg, args.out, args.classifier_epochs, label=" ".join(args.items),
                      progress=not args.no_progress, log=_warning_log(pending, skip="stage 1 "))
    print((Path(args.out) / "two_stage.md").read_text().rstrip())
    print(f"written: {Path(args.out) / 'two_stage.md'}, two_stage.png, two_stage.json ({study['date']})")
    return 0


# train.precision's values (bbn.engine.speed; named here so the parser needs no torch).
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def build_parser() -> argparse.ArgumentParser:
    from bbn import __version__

    parser = argparse.ArgumentParser(prog="bbn", description="BBN for long-tailed image recognition")
    parser.add_argument("--version", action="version", version=f"bbn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]",
                   help="a YAML config (default: the digits-LT BBN demo) and overrides")
    p.add_argument("--out", help="run folder to create (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN|auto",
                   help="continue the run in folder RUN; 'auto' with CONFIG and --out: continue the run in "
                        "--out if it has the same config, reuse it if finished, else start it")
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="with --resume RUN: continue in this precision instead of the run's own (the result "
                        "is then no longer bit-exact with an uninterrupted run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="an unreadable image file is an error, not a skipped and listed one (data.strict=true)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a run folder (its best.pt) or a checkpoint")
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="the forward pass's precision (default: the run's train.precision as it resolves here)")
    p.add_argument("--branch", choices=["all", "cb", "rb"], default="all",
                   help="all: the normal inference (alpha = 0.5); cb / rb: BBN-CB (W_c f_c + b) "
                        "or BBN-RB (W_r f_r + b) alone")
    p.add_argument("--adjust", action="append", metavar="KIND:tau=T|sweep",
                   help="also report a post-hoc adjustment (repeatable): logit:tau=T (z - T log prior) or "
                        "tau_norm:tau=T (w_i / ||w_i||^T); tau=sweep picks T by top-1 on the validation "
                        "split, else on the test set (labelled selection: test)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("import-reference", help="convert an authors' released BBN checkpoint to a bbn checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the reference .pth (ResNet-32 or ResNet-50 layout)")
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides of the embedded config")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="the bbn checkpoint to write")
    p.add_argument("--config", metavar="CONFIG", help="config (YAML or preset) of its data, for bbn eval")
    p.add_argument("--model", help="network name (default: detected from the weights)")
    p.add_argument("--num-classes", type=int, metavar="C", help="check the classifier has C classes")
    p.add_argument("--class-names", metavar="FILE", help="text file, one class name per line (for bbn predict)")
    p.set_defaults(func=cmd_import_reference)
    p = sub.add_parser("predict", help="top-k classes of image files from a run folder, checkpoint or exported file")
    p.add_argument("target", metavar="CHECKPOINT_OR_RUN_OR_EXPORT",
                   help="a run folder, a checkpoint, or a file bbn export wrote (.onnx, .safetensors, TorchScript)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--out", metavar="FILE.csv|FILE.json", help="write the predictions there (default: a table)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="a checkpoint's forward pass (default: its train.precision as it resolves here)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="a run's or checkpoint's network as ONNX, a safetensors release file or "
                                      "(legacy) TorchScript, parity-checked",
                       description="Write a run's or checkpoint's network with its class names and input "
                                   "description inside, checked against the checkpoint's logits. TorchScript is "
                                   "a legacy format (torch.jit is deprecated): prefer onnx.")
    p.add_argument("target", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--format", required=True, choices=["onnx", "safetensors", "torchscript"],
                   help="onnx: the graph (dynamo exporter); safetensors: a weights-only release file (weights, "
                        "config, class names, input description) that bbn predict and bbn eval read; "
                        "torchscript: legacy, still written")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (.onnx / .safetensors / .ts)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("analyze", help="the paper's analyses of trained runs")
    analyses = p.add_subparsers(dest="analysis", required=True)
    q = analyses.add_parser("weight-norms", help="per-class classifier weight norms, head to tail (Figure 5)")
    q.add_argument("runs", nargs="+", metavar="RUN", help="run folders (their best.pt, else last.pt) or checkpoints")
    q.add_argument("--out", required=True, metavar="FILE.png", help="the plot; the table goes beside it as FILE.md")
    q.add_argument("--labels", metavar="A,B,...", help="one label per RUN (default: the run folder names)")
    q.set_defaults(func=cmd_analyze_weight_norms)
    p = sub.add_parser("data", help="class counts and shot groups of a config's training set; "
                                    "convert-inat IN.json OUT.json converts iNaturalist annotations")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value] | convert-inat IN.json OUT.json")
    p.add_argument("--root", help="convert-inat: the folder image paths start from (original -> converted: "
                                  "fpath = ROOT/file_name; back: file_name = fpath relative to ROOT)")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("presets", help="the shipped presets, one line each")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("config", help="print the resolved config of a preset or YAML file with overrides "
                                      "(what the run's config.yaml would hold)")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]",
                   help="a preset name or YAML file (default: the digits-LT BBN demo) and overrides")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("reproduce", help="run presets over seeds (resumable) and tabulate them beside the paper")
    p.add_argument("items", nargs="+", metavar="CONFIG_GLOB [key=value]",
                   help="preset names or YAML paths (shell patterns, quoted), then overrides for every run")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per config (default 3)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="also run every value of KEY (repeatable: the product is run)")
    p.add_argument("--out", default="runs/reproduce", help="folder of the runs and results.md")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, each with a share of the CPU threads")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("compare", help="finished runs side by side: one table (seeds as mean ± std), "
                                       "with --out also curves and a per-class difference plot")
    p.add_argument("items", nargs="*", metavar="RUN", help="finished run folders (each with final.json)")
    p.add_argument("--out", metavar="DIR", help="write compare.md, curves.png and per_class_diff.png there")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("study", help="classifier re-training on frozen features; the two-stage study (Figure 1)")
    studies = p.add_subparsers(dest="study", required=True)
    q = studies.add_parser("retrain", help="a new classifier on a run's frozen representation")
    q.add_argument("run", metavar="RUN", help="a run folder (its checkpoints/last.pt)")
    q.add_argument("--rule", required=True, metavar="RULE", help="ce, rw, rs, crt (= rs), tau_norm or lws")
    q.add_argument("--branch", metavar="cb|rb", help="a BBN run's features: cb (f_c) or rb (f_r)")
    q.add_argument("--epochs", type=int, help="stage-2 epochs (default 10)")
    q.add_argument("--taus", metavar="T1,T2,...", help="tau_norm's taus (default 0,0.1,...,1)")
    q.add_argument("--out", metavar="FILE.json", help="default RUN/retrain-<rule>[-<branch>].json")
    q.set_defaults(func=cmd_study_retrain)
    q = studies.add_parser("two-stage", help="CE/RW/RS representations x CE/RW/RS classifiers (resumable)")
    q.add_argument("items", nargs="+", metavar="CONFIG [key=value]", help="a YAML config or preset, then overrides")
    q.add_argument("--out", required=True, metavar="DIR", help="folder of the stage-1 runs and the results")
    q.add_argument("--classifier-epochs", type=int, default=10, metavar="N", help="stage-2 epochs (default 10)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_study_two_stage)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Like parse_args, but CONFIG and key=value items may come after options too."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or not hasattr(args, "items")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.items = [*args.items, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # torch warns about the protocol byte of a foreign file before refusing to load it; the
    # refusal (one BBNError line) is what the user needs to read.
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    try:
        return args.func(args)
    except BBNError as err:
        print(f"bbn: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of stdout left early (`bbn presets | head`): not an error of the input
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + 13  # as if killed by SIGPIPE, like other command-line tools
    except OSError as err:  # the environment, wherever it surfaces: a full disk, a read-only folder
        where = f" '{err.filename}'" if err.filename else ""
        print(f"bbn: error: cannot access{where} ({err.strerror or err}); check the path, its permissions "
              "and the free disk space", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as stop:
        print(f"bbn: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("bbn: interrupted", file=sys.stderr)
        return 130

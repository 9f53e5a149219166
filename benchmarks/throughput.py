"""Training and evaluation throughput of BBN ResNet-32 on a CIFAR-10-LT-sized set, for
named variants side by side in one run.

    python benchmarks/throughput.py [--variants auto|reference,ours,...] [--steps 20] [--repeats 3]
                                    [--ceiling] [--append]

Each variant runs in its own process (so peak memory and thread settings are its own) on
the same synthetic CIFAR-10-LT IR100 set (12,406 uint8 32x32 images, the paper's class
counts) and reports: training images/s counting both branches (128 + 128 per step),
seconds per epoch (96 steps, from the measured seconds per step), evaluation images/s over
the 10,000-image test set, and peak memory (resident set of the variant's main process on
the CPU; allocated memory on CUDA).

`reference` re-implements the reference's pipeline: a Dataset that turns each uint8 image
into a PIL image, draws its reversed sample inside `__getitem__` with Python's `random`,
applies torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor +
Normalize per sample in 2 DataLoader workers; two fp32 passes per step, and the shown
accuracy brought to the host every step. The other variants are this package's trainer
(`bbn.engine.train.train_epoch`) with config overrides; `ours` is what `bbn train` runs by
default (train.precision=auto: bf16 on a host that runs it natively, else fp32), and
`--variants auto` measures it beside the reference and its fp32 counterpart. With
`--repeats R` the variants run R times in turn (reference, ours, ..., reference, ours, ...)
and the table gives each one's median with the range; `--ceiling` adds each variant's share
of the arithmetic ceiling of its precision (benchmarks/ceiling.py). The table's first line
names the host: CPU model, its speed flags, oneDNN and threads.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bbn.config import Config, load_config
from bbn.data.cifar import CIFAR_MEAN, CIFAR_STD
from bbn.data.longtail import longtail_counts
from bbn.data.loader import DeviceImages
from bbn.data.sources import LabeledImages, Splits
from bbn.devices import resolve_device
from bbn.engine.evaluate import evaluate
from bbn.methods import METHODS
from bbn.models import create_model
from bbn.engine.distributed import SINGLE
from bbn.engine.optim import build_optimizer
from bbn.engine.session import Trainer, TrainState
from bbn.engine.speed import compile_model, grad_scaler, memory_format, resolve_precision
from bbn.engine.provenance import host_line
from bbn.engine.train import train_epoch, versions

RESULTS = Path(__file__).with_name("RESULTS.md")
TEST_IMAGES = 10_000

# Our variants: name -> config overrides on the cifar10_ir100_bbn preset.
OURS: dict[str, list[str]] = {
    "ours-fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "ours-channels_last": ["train.precision=fp32", "train.channels_last=true", "train.compile=false"],
    "ours-bf16": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "ours-compile": ["train.precision=fp32", "train.channels_last=true", "train.compile=true"],
    "ours-bf16-compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    "ours": [],  # the preset's defaults: what `bbn train cifar10_ir100_bbn` runs
}
# --variants auto: the default beside the reference and the default's fp32 counterpart.
AUTO = ("reference", "ours-channels_last", "ours")


# --smoke: a tiny run that only shows the script works (its figures mean nothing).
SMOKE_OVERRIDES = ["train.batch_size=8", "train.eval_batch_size=64"]
SMOKE_IMAGES = (500, 100)  # N_max of the long-tailed training set (N_min 5), test images


def synthetic_cifar_lt(seed: int = 0, smoke: bool = False) -> tuple[LabeledImages, LabeledImages]:
    """Random images with CIFAR-10-LT IR100's class counts (12,406) and a 10,000 test set
    (with `smoke`, N_max = 500 and 100 test images)."""
    g = torch.Generator().manual_seed(seed)
    n_max, test_images = SMOKE_IMAGES if smoke else (5000, TEST_IMAGES)
    counts = longtail_counts(n_max, 10, 100, "exp")
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    names = [f"class{c}" for c in range(10)]
    train = LabeledImages(torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g, dtype=torch.uint8),
                          labels, names)
    test_labels = torch.arange(test_images) % 10
    test = LabeledImages(torch.randint(0, 256, (test_images, 3, 32, 32), generator=g, dtype=torch.uint8),
                         test_labels, names)
    return train, test


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- this package's trainer -------------------------------------------------------------


def synthetic_trainer(cfg: Config, smoke: bool = False) -> Trainer:
    """The components of a run of `cfg` on the synthetic CIFAR-10-LT set, with the trainer's
    speed switches applied as `bbn train` applies them."""
    train, test = synthetic_cifar_lt(smoke=smoke)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    fmt = memory_format(cfg.train.channels_last)
    model = create_model(cfg.model.name, 10, 3).to(device=device, memory_format=fmt)
    if cfg.train.compile:
        compile_model(model)
    aug = cfg.augment
    precision = resolve_precision(cfg.train.precision, device)
    return Trainer(cfg=cfg, device=device, world=SINGLE, data=Splits(train, test, CIFAR_MEAN, CIFAR_STD),
                   model=model, method=METHODS.get(cfg.method.name)(cfg, train.labels, 10),
                   optimizer=build_optimizer(model, cfg.train),
                   train_set=DeviceImages.create(train, CIFAR_MEAN, CIFAR_STD, device, fmt, aug.crop_padding, aug.flip),
                   test_set=DeviceImages.create(test, CIFAR_MEAN, CIFAR_STD, device, fmt),
                   step=SINGLE.step_module(model, False, device), precision=precision,
                   scaler=grad_scaler(precision, device))


def run_ours(overrides: list[str], steps: int, warmup: int, device_name: str, smoke: bool = False) -> dict[str, Any]:
    cfg = load_config("cifar10_ir100_bbn", [*overrides, f"train.device={device_name}", "train.tensorboard=false",
                                            *(SMOKE_OVERRIDES if smoke else [])])
    s = synthetic_trainer(cfg, smoke)
    device, data, method = s.device, s.data, s.method
    if warmup:
        train_epoch(s, TrainState(), progress=False, max_steps=warmup)  # compilation, allocator and cache warm-up
    _sync(device)
    start = time.perf_counter()
    row = train_epoch(s, TrainState(), progress=False, max_steps=steps)
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    with s.autocast():
        evaluate(s.model, s.test_set, data.class_counts, cfg.train.eval_batch_size)
    _sync(device)
    eval_s = time.perf_counter() - start
    return {"step_s": step_s, "images_per_step": 2 * cfg.train.batch_size, "eval_s": eval_s,
            "steps_per_epoch": method.steps_per_epoch(), "peak_mb": _peak_memory_mb(device),
            "loss": row["train_loss"], "precision": s.precision.name}


# --- the reference's pipeline -----------------------------------------------------------


class ReferenceCIFAR(torch.utils.data.Dataset):
    """The reference's IMBALANCECIFAR10 with its dual sampler: PIL per image, the reversed
    sample drawn inside __getitem__ by a Python loop over the class weights."""

    def __init__(self, data: LabeledImages, transform: Callable, dual_sample: bool) -> None:
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as the pickles
        self.labels = data.labels.tolist()
        self.transform, self.dual_sample = transform, dual_sample
        num_list = data.class_counts()
        self.class_weight = [max(num_list) / n for n in num_list]
        self.sum_weight = sum(self.class_weight)
        self.class_dict: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            self.class_dict.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return len(self.labels)

    def sample_class_index_by_weight(self) -> int:
        rand_number, now_sum = random.random() * self.sum_weight, 0.0
        for i, w in enumerate(self.class_weight):
            now_sum += w
            if rand_number <= now_sum:
                return i
        return len(self.class_weight) - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, Any]]:
        from PIL import Image

        meta: dict[str, Any] = {}
        if self.dual_sample:
            sample_class = self.sample_class_index_by_weight()
            sample_index = random.choice(self.class_dict[sample_class])
            meta["sample_image"] = self.transform(Image.fromarray(self.images[sample_index]))
            meta["sample_label"] = self.labels[sample_index]
        return self.transform(Image.fromarray(self.images[index])), self.labels[index], meta


def run_reference(steps: int, warmup: int, device_name: str, workers: int = 2, smoke: bool = False) -> dict[str, Any]:
    import torchvision.transforms as T

    device = resolve_device(device_name)
    train, test = synthetic_cifar_lt(smoke=smoke)
    batch = 8 if smoke else 128
    normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test_tf = T.Compose([T.ToTensor(), normalize])
    loader = torch.utils.data.DataLoader(
        ReferenceCIFAR(train, train_tf, dual_sample=True), batch_size=batch, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True)
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10, 3).to(device)
    cfg = load_config("cifar10_ir100_bbn")
    optimizer = build_optimizer(model, cfg.train)
    model.train()
    epoch, div_epoch = 1, 200
    batches = iter(loader)
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        image, label, meta = next(batches)
        image_a, label_a = image.to(device), label.to(device)
        image_b, label_b = meta["sample_image"].to(device), meta["sample_label"].to(device)
        feature_a = model.features(image_a, "cb")
        feature_b = model.features(image_b, "rb")
        l = 1 - ((epoch - 1) / div_epoch) ** 2  # noqa: E741 - the reference's name
        mixed_feature = 2 * torch.cat((l * feature_a, (1 - l) * feature_b), dim=1)
        output = model.classifier(mixed_feature)
        loss = l * F.cross_entropy(output, label_a) + (1 - l) * F.cross_entropy(output, label_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        now_result = torch.argmax(torch.softmax(output, 1), 1).cpu().numpy()
        _acc = l * float((now_result == label_a.cpu().numpy()).mean()) + \
            (1 - l) * float((now_result == label_b.cpu().numpy()).mean())
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    test_loader = torch.utils.data.DataLoader(ReferenceCIFAR(test, test_tf, dual_sample=False), batch_size=64,
                                              shuffle=False, num_workers=workers)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for image, label, _ in test_loader:
            torch.argmax(torch.softmax(model(image.to(device)), 1), 1).cpu()
    _sync(device)
    eval_s = time.perf_counter() - start
    return {"step_s": step_s, "images_per_step": 2 * batch, "eval_s": eval_s, "steps_per_epoch": len(loader),
            "peak_mb": _peak_memory_mb(device), "loss": float(loss.detach())}


# --- driver ---------------------------------------------------------------------------


class _ListQueue:
    """The `put` of a queue, for a variant run in this process."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)


def _child(name: str, steps: int, warmup: int, device: str, threads: int | None, queue: mp.Queue,
           smoke: bool = False) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        if name == "reference":
            out = run_reference(steps, warmup, device, workers=0 if smoke else 2, smoke=smoke)
        else:
            out = run_ours(OURS[name], steps, warmup, device, smoke)
        queue.put((name, out))
    except Exception as exc:  # reported in the table, never hidden
        queue.put((name, {"error": f"{type(exc).__name__}: {exc}"}))


def measure(name: str, steps: int, warmup: int, device: str, threads: int | None,
            smoke: bool = False) -> dict[str, Any]:
    """One variant in a fresh process (so none inherits another's caches or threads); a
    smoke run, whose figures mean nothing, runs it in this process."""
    if smoke:
        queue: Any = _ListQueue()
        _child(name, steps, warmup, device, threads, queue, smoke)
        return queue.items[0][1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, steps, warmup, device, threads, queue, smoke))
    proc.start()
    _, out = queue.get()
    proc.join()
    return out


def machine(device: str) -> str:
    """The host line of a table: CPU, speed flags, native bf16, torch, oneDNN, threads (and GPU)."""
    v = versions()
    return f"{host_line()}; torchvision {v['torchvision']}, Python {v['python']}; device {device}"


def append_results(title: str, device: str, what: str, text: str) -> None:
    """Append a dated section (machine, the command that was run, the table) to RESULTS.md."""
    command = f"python {Path(sys.argv[0]).as_posix()} " + " ".join(sys.argv[1:])
    with RESULTS.open("a") as f:
        f.write(f"\n### {title} ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine(device)}. "
                f"Command: `{command.strip()}`. {what}\n\n{text}\n")


def ceiling_of(ceilings: dict[str, float], precision: str) -> float:
    """The ceiling (img/s, benchmarks/ceiling.py) of a variant's precision; fp32's where the
    CPU has no native one."""
    return ceilings.get(precision, ceilings["fp32"])


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median step time, with the range of the training rate over all runs
    (`rates`); a failed run is reported as the variant's result."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["step_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rates": [r["images_per_step"] / r["step_s"] for r in ordered]}


def table(results: dict[str, dict[str, Any]], ceilings: dict[str, float] | None = None) -> str:
    """One row per variant; with several repeats the training rate is the median [min-max];
    `ceilings` (img/s per precision) adds each variant's share of its ceiling."""
    base = results.get("reference", {}).get("step_s")
    extra = " of ceiling |" if ceilings else ""
    lines = [f"| variant | precision | train img/s | epoch s | eval img/s | peak MB | vs reference |{extra}",
             "|---|---|---|---|---|---|---|" + ("---|" if ceilings else "")]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | | | |" + (" |" if ceilings else ""))
            continue
        rate = r["images_per_step"] / r["step_s"]
        spread = (f" [{min(r['rates']):,.0f}-{max(r['rates']):,.0f}]" if len(r.get("rates", [])) > 1 else "")
        ratio = f"{base / r['step_s']:.2f}x" if base else "n/a"
        precision = r.get("precision", "fp32")
        share = f" {rate / ceiling_of(ceilings, precision):.0%} |" if ceilings else ""
        lines.append(f"| {name} | {precision} | {rate:,.0f}{spread} | {r['step_s'] * r['steps_per_epoch']:.1f} | "
                     f"{TEST_IMAGES / r['eval_s']:,.0f} | {r['peak_mb']:,.0f} | {ratio} |{share}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="reference," + ",".join(OURS),
                        help=f"comma-separated, from: reference, {', '.join(OURS)}; or auto "
                             f"({', '.join(AUTO)}: the default beside the reference and fp32)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every variant this many times, in turn; the table gives medians")
    parser.add_argument("--ceiling", action="store_true",
                        help="add each variant's share of the arithmetic ceiling of its precision")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (8 + 8 images a step, a small set) that only checks the script works; "
                             "exits 1 when a variant fails")
    args = parser.parse_args()
    if args.smoke and args.append:
        parser.error("--smoke figures mean nothing; drop --append")
    names = list(AUTO) if args.variants == "auto" else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n != "reference" and n not in OURS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: reference, {', '.join(OURS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print(machine(args.device))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            print(f"measuring {name} ({repeat + 1}/{args.repeats}) ...", file=sys.stderr)
            runs[name].append(measure(name, args.steps, args.warmup, args.device, args.threads, args.smoke))
    results = {name: median_of(r) for name, r in runs.items()}
    ceilings = None
    if args.ceiling:
        from ceiling import ceilings_per_precision, image_flops

        ceilings = ceilings_per_precision(image_flops(args.smoke), args.smoke)
        print("ceilings (img/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items()))
    text = table(results, ceilings)
    print(text)
    if args.append:
        what = (f"{args.steps} timed steps after {args.warmup} untimed, per variant"
                + (f"; {args.repeats} repeats in turn, median [range]" if args.repeats > 1 else "") + "."
                + (" Ceilings (img/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in ceilings.items()) + "."
                   if ceilings else ""))
        append_results("Throughput, BBN ResNet-32, CIFAR-10-LT IR100 size", args.device, what, text)
    return 1 if args.smoke and any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

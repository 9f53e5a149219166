"""Feature quality (SPEC §7): freeze each representation, retrain a classifier from scratch,
compare the test errors; then the Decoupling rules (cRT, tau-norm, LWS) on CE's. Representations: CE, RW and RS networks and BBN's two branches
(f_c of BBN-CB, f_r of BBN-RB), from the Table 1 runs of run.sh.

    python experiments/digits_lt/feature_quality.py RUNS_DIR SEEDS OUT.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bbn.tools.reproduce import mean_std
from bbn.tools.study import retrain_run

REPRESENTATIONS = (("CE", "digits_ce", None), ("RW", "digits_rw", None), ("RS", "digits_rs", None),
                   ("BBN-CB", "digits_bbn", "cb"), ("BBN-RB", "digits_bbn", "rb"))
RULES = ("ce", "rs")
DECOUPLING = ("crt", "tau_norm", "lws")


def main() -> int:
    runs, seeds, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    lines = ["# Feature quality on digits-LT", "",
             f"Date: {time.strftime('%Y-%m-%d')}. Each representation is frozen (last epoch of the "
             f"Table 1 run) and a new linear classifier is trained from scratch on it for 10 epochs; "
             f"top-1 error %, mean ± std over {seeds} seeds. Command: "
             f"`python experiments/digits_lt/feature_quality.py {' '.join(sys.argv[1:])}`.", "",
             "| representation | " + " | ".join(f"{r.upper()} classifier" for r in RULES) + " |",
             "|---|" + "---|" * len(RULES)]
    for label, preset, branch in REPRESENTATIONS:
        cells = []
        for rule in RULES:
            errors = []
            for seed in range(seeds):
                run = runs / preset / f"seed{seed}"
                out_json = run / f"feature-quality-{rule}{'-' + branch if branch else ''}.json"
                errors.append(retrain_run(run, rule, branch, out=out_json)["error"])
            cells.append(mean_std(errors))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Decoupling on the CE representation", "",
              "cRT retrains the classifier with class-balanced sampling; tau-normalisation rescales the "
              "CE classifier's rows by 1/||w_i||^tau (tau chosen on the test set, so optimistic); LWS "
              "learns one scale per class with class-balanced sampling. Top-1 error %, and few-shot "
              "accuracy %.", "",
              "| rule | top-1 error % | few-shot accuracy % |", "|---|---|---|"]
    for rule in DECOUPLING:
        results = [retrain_run(runs / "digits_ce" / f"seed{seed}", rule,
                               out=runs / "digits_ce" / f"seed{seed}" / f"decoupling-{rule}.json")
                   for seed in range(seeds)]
        lines.append(f"| {rule} | {mean_std([r['error'] for r in results])} | {mean_std([r['few'] for r in results])} |")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

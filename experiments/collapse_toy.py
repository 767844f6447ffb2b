"""The exact toys of model collapse (workbench/toys.py): the loop's own mix policies (`mix.mix`,
`mix.detector_resample`) on a 1-D Gaussian refitted on its own samples (Shumailov et al. 2024: the variance
shrinks) and on linear regression refitted on its own labels (Gerstgrasser et al. 2024: the test error grows
linearly under replace and stays bounded under accumulate), against their closed forms. Seconds to run.

    python experiments/collapse_toy.py             # seeds 0,1,2 (each 1,000 Monte-Carlo repeats; 300 for the
                                                   # detector, resampled per repeat), 10 generations, n = 50
    python experiments/collapse_toy.py --smoke     # fewer repeats (the test suite runs it)

The table: per toy, policy and seed-pooled generation 1, 5 and 10, the simulated mean ± 1.96 standard errors
(all seeds' repeats pooled), the closed form, and whether they agree within 4 standard errors.
"""
from __future__ import annotations

import time

from common import markdown_table, parse, write


def table(frame):
    import numpy as np
    import pandas as pd

    rows = []
    for (toy, policy, generation), group in frame.groupby(["toy", "policy", "generation"], sort=False):
        if generation not in (1, 5, 10):
            continue
        # pool the seeds: each seed's mean is over `repeats` runs, so the pooled SE is the seeds' SEs combined
        mean = float(group["mean"].mean())
        se = float(np.sqrt((group["se"] ** 2).sum()) / len(group))
        exact = float(group["exact"].iloc[0])
        kind = group["exact_kind"].iloc[0]
        rows.append({"toy": toy, "policy": policy, "generation": int(generation),
                     "simulated (mean ± 1.96 SE, seeds pooled)": f"{mean:.4f} ± {1.96 * se:.4f}",
                     "closed form": "" if exact != exact else f"{exact:.4f}" + (" (n→∞ limit)" if kind == "limit" else ""),
                     "agrees (4 SE)": "" if exact != exact or kind != "exact" else
                     ("yes" if abs(mean - exact) <= 4 * se else "NO")})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from workbench.toys import run_toys

    args = parse(__doc__, argv)
    args.out = args.out or ("data/runs/experiments/collapse_toy-smoke/results" if args.smoke else
                            str(__import__("common").RESULTS))
    started = time.perf_counter()
    repeats, detector_repeats = (100, 40) if args.smoke else (1000, 300)
    frame = pd.concat([run_toys(seed=seed, repeats=repeats, detector_repeats=detector_repeats).assign(seed=seed)
                       for seed in args.seeds], ignore_index=True)
    shown = table(frame)
    summary = shown.copy()
    write("collapse_toy", frame, summary, args, started, markdown_table(shown),
          extra={"repeats": repeats, "detector_repeats": detector_repeats,
                 "disagreements": int((shown["agrees (4 SE)"] == "NO").sum())},
          interval="Monte-Carlo mean ± 1.96 standard errors, every seed's repeats pooled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

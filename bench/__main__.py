"""``make bench``: every figure measured in this one run, on the embedded stack.

The last line is the pipeline's summary: ``ratio_to_ceiling=<float> speedup_vs_naive=<float>``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path


def _print(title: str, figures: dict[str, float]) -> None:
    print(f"== {title}")
    for name, value in figures.items():
        print(f"  {name:<36} {value:,.2f}")
    sys.stdout.flush()


def main() -> None:
    for module, title in (("bench.bench_tagging", "tagging (one core)"),
                          ("bench.bench_model", "learned tier"),
                          ("bench.bench_detector", "spike detector")):
        try:
            figures = importlib.import_module(module).run()
        except ModuleNotFoundError as exc:
            print(f"== {title}: not measured ({exc})")
            continue
        if figures:
            _print(title, figures)

    from bench import pipeline

    with tempfile.TemporaryDirectory(prefix="earful-bench-") as tmp:
        figures = pipeline.run(Path(tmp))
    print(f"ratio_to_ceiling={figures['ratio_to_ceiling']:.3f} speedup_vs_naive={figures['speedup_vs_naive']:.2f}")


if __name__ == "__main__":
    main()

"""Quality study at the main job's scale: does VALP train a better GAN than the other Lipschitz
regularisers? The trainers' ``digits`` preset (800 iterations) per cell and seed, scored by
``train.evaluation.digits`` and compared at equal iterations and at equal wall-clock.

    python -m bench.quality                  # the study (resumable: continues where it stopped)
    python -m bench.quality --report-only    # the report and figures from the records
    python -m bench.quality --iterations 4 --seeds 2 --cells valp,gp --out /tmp/q   # a quick look

Cells (``cells.CELLS``): torch ``valp``, ``valp-half``, ``gp``, ``lp``, ``sn``, ``wc``, ``none``;
JAX ``valp`` and ``gp``; 5 paired seeds each. Records: ``bench/results/quality_digits.json``
(``store``); statistics: ``stats``; tables, verdicts, Markdown and figures: ``report``.
"""

from bench.quality.cells import CELLS, DEFAULT_CELLS, CellError, cell_config
from bench.quality.cli import main
from bench.quality.report import summarise
from bench.quality.stats import bootstrap_ci, interpolate, lipschitz_on_pairs, paired_comparison
from bench.quality.store import Plan, StudyFile

__all__ = ["CELLS", "DEFAULT_CELLS", "CellError", "Plan", "StudyFile", "bootstrap_ci", "cell_config",
           "interpolate", "lipschitz_on_pairs", "main", "paired_comparison", "summarise"]

"""``python -m train.plot RUN_DIR [--out FILE]``: draw a run's metrics (train.runs.plot)."""

from train.runs.plot import main

if __name__ == "__main__":
    raise SystemExit(main())

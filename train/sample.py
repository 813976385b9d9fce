"""``python -m train.sample CHECKPOINT``: sample grids from a checkpoint (train.runs.sample)."""

from train.runs.sample import main

if __name__ == "__main__":
    raise SystemExit(main())

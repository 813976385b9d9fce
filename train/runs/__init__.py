"""A run directory's files: checkpoints (``checkpoint``), metrics and TensorBoard logs and sample
grids (``logs``), and the tools that read them back (``plot``, ``sample``)."""

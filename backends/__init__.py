"""Thin framework adapters implementing ``valr_core.interface.Backend``.

Each submodule imports its framework; nothing here does. Use ``valr_core.get_backend(name)``.
"""

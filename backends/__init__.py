"""Framework adapters implementing ``valr_core.interface.Backend`` (``valr_core.get_backend``)."""

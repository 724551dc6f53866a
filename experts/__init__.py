"""Experts: branch the base, train each on its cluster only, register; add languages (HMR).

``experts.registry`` (reading and writing experts) and ``experts.training`` (the training loop)
are imported separately, so inference code that reads the registry never loads training."""

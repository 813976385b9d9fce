"""Sample-quality evaluation of the trainers: Inception metrics (IS/FID/KID) for CIFAR-10-like
data (``inception``) and the offline digits classifier's FD-digits/KID/coverage (``digits``)."""

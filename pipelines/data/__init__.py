"""Data in: MovieLens and tabular loaders, the on-disk layout, and the synthetic platform."""

"""Jobs and serving: where retrieval, ranking and the index meet.

TFRS 0.7.7 needs Keras 2: ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first
imported (the one import-time side effect the project allows).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

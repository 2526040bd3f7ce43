"""Multi-head-attention ranker over the watch history (TensorFlow Recommenders).

TFRS 0.7.7 needs Keras 2, which TensorFlow only provides (as ``tf_keras``) when
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported: the one import-time side
effect the project allows.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

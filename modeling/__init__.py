"""TensorFlow code the retrieval and ranking models share: layers, the training loop, and the
runtimes that run a model at the fixed shapes of one request.

`retrieval` and `ranking` import this package; it imports `core`, TensorFlow and LiteRT, never
Faiss and never `retrieval`, `ranking`, `index` or `pipelines`.

TFRS 0.7.7 needs Keras 2, which TensorFlow only provides (as ``tf_keras``) when
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported: the one import-time side
effect the project allows. Nothing else is imported here, so `modeling.child_process` stays
cheap to import.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

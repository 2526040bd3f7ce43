"""The training loop's progress callback counts every step of a real Keras fit."""

import io

import numpy as np
import tensorflow as tf

from core.progress import Progress
from modeling.training import StepProgress


def test_every_training_step_is_counted_and_the_report_closed():
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((10, 3), np.float32), np.zeros((10, 1), np.float32))
    ).batch(2)
    progress = Progress("epoch 1", int(data.cardinality()), stream=io.StringIO())
    model.fit(data, epochs=1, verbose=0, callbacks=[StepProgress(progress)])
    assert (progress.done, progress.total) == (5, 5)
    assert not progress.enabled  # closed at the end of fit: nothing more is reported

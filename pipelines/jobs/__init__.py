"""The offline jobs: train, build-index, evaluate, retrain, demo, and what only they use."""

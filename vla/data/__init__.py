"""Datasets: record episodes (LeRobot v3.0), read them for training, normalize features.

    vla.data.recorder   EpisodeRecorder, features_from_space, repair_dataset: crash-safe writing
    vla.data.collect    collect(env, agent, recorder, n): run an agent into a dataset
    vla.data.source     open_dataset, delta_timestamps_for, check_features: reading for training
    vla.data.mapping    FeatureMap: a dataset's keys (renamed, sliced, joined) as the policy's features
    vla.data.pipeline   TrainingData: a dataset -> training batches (cached features or raw frames)
    vla.data.normalize  Normalizer: per-feature normalization whose stats travel in the checkpoint

Import the submodule you need: this package imports nothing itself, because lerobot's dataset
code takes ~7 s to import and normalize/cache/chunks users do not need it.
"""

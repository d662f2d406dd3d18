"""Label smoothing on top of Mixup under noisy labels: a Hydra benchmarking suite."""

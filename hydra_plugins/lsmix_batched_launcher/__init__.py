"""Hydra launcher `hydra/launcher=batched`: a sweep's runs that differ only in the batchable
keys (seed, Mixup alpha, smoothing eps) train together as one batched model (see
batched_launcher.py). A plugin in Hydra's `hydra_plugins` namespace package, found by Hydra's
plugin scan wherever the checkout (or the installed project) is on sys.path."""

"""Hydra launchers `hydra/launcher=batched` and `hydra/launcher=batched_slurm`: a sweep's runs
that differ only in the batchable keys (seed, Mixup alpha, smoothing eps) train together as one
batched model, in this process (batched_launcher.py) or as one SLURM job per batch
(slurm_launcher.py). A plugin in Hydra's `hydra_plugins` namespace package, found by Hydra's
plugin scan wherever the checkout (or the installed project) is on sys.path."""

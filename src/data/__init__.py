"""The data stage: arrays from disk (src.data.arrays), label noise (src.noise), and the
tensors a run trains on, resident on its device (src.data.tensors)."""

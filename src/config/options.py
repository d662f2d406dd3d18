"""The allowed values of the settings that several modules check, in one torch-free place:
validation imports them without loading torch, so a bad config is refused in a fraction of
a second."""

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# trainer.compile: true, false, or one of torch.compile's modes by name.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs
WANDB_MODES = ("online", "offline", "disabled")

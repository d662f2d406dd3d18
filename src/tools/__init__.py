"""Tools around the suite: the benchmark (src.tools.bench), where a sweep's time goes
(src.tools.sweep_time), the reference loop they compare against, concurrent runs
(src.tools.concurrent_runs) and the upload of offline W&B runs (src.tools.wandb_sync)."""

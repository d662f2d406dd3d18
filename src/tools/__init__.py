"""Tools around the suite: the benchmark (src.tools.bench), where a sweep's time goes
(src.tools.sweep_time), and the reference loop they compare against."""

"""The run stage: a job's pre-flight (src.run.preflight) and lifecycle (src.run.lifecycle), its
identity and records, its progress lines and external loggers, the lock on its folders and
the process's signal policy."""

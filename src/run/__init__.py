"""The run stage: a job's lifecycle (src.run.lifecycle), its identity and records, the lock
on its folders and the process's signal policy."""

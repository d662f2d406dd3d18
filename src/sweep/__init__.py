"""Hydra's hooks around a sweep: its progress line (progress) and the up-front check of every
job's overrides before any job runs (validation)."""

"""The audit report: one self-contained HTML page per run, rebuilt from the run's artifacts alone."""

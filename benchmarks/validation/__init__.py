"""Statistical validation: coverage and error rates of the intervals and claims by simulation."""

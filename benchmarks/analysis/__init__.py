"""Analysis of finished runs that is not a user command: two studies' pieces against each other."""

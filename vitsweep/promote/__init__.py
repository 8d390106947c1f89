"""``vitsweep promote``: ``select`` (which trials), ``retrain`` (the command: full-length runs,
tested once each), ``results`` (run records, leaderboard and their files, read back by the report)."""

"""`foreman bench`: measure Foreman on this machine (issue 4). Run on demand, never in tests."""

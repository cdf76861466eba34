"""The `minima` command: parses its arguments and calls `sweeps`, `analysis` and `trainables`.
Above all three, so each of them imports only downward; nothing imports `minima`."""

"""Running trials: `tune launch`, the worker and its loop, one trial's objective, a pack of
trials, and which stored commands a worker runs."""

"""Running trials: `tune launch`, the worker and its loop, one trial's objective, a pack of trials,
the reaper thread, and the fail points chaos tests kill workers at."""

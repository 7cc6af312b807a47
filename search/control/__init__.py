"""A study's control, on top of its storage: the study manager that workers, launch, status and
benches share (claims within the budget, the stored spec, races, failing a worker's own trials),
the start gate, reaping dead workers' trials, the fail points chaos tests kill workers at, and
the `tune proxy` server."""

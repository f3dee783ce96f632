"""A run's lifecycle: the states it can be in, the moves between them, and the summaries every
move keeps current for the claim (lanes, tenants' ready and running counts, queues' running
counts).

- `states`: the declared table of moves and what each does;
- `moves`: the one place that changes `runs.state` (besides the PostgreSQL claim function);
- `summaries`: the bookkeeping of ready and running runs that claims read;
- `check`: recomputes every summary from the runs, to find and mend drift (`greenroom doctor`).
"""

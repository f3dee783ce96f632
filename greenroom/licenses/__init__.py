"""License intelligence: which paid seats go unused, told apart from noise (stale data, new hires,
the same license reported every day). Pure domain code; storage and the pass live elsewhere."""

"""How a process of ours is set up: known third-party noise silenced, Triton kept out where there is no GPU."""

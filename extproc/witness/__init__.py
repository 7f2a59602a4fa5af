"""A C2SP tlog-witness (`extproc-audit witness`: its state and HTTP server) and the
client `serve` uses to have its checkpoints cosigned (docs/FORMAT.md, "Witnesses")."""

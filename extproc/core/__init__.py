"""Pure core: no I/O, no clock, no globals. Everything here is deterministic."""

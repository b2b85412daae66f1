"""The HA module: fault management, checkpoint management, recovery decisions."""

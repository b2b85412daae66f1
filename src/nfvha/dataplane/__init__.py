"""Data plane: the steering forwarder with its packet log and replay."""

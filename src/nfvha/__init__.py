"""nfvha: high availability for unmodified stateful VNFs."""
__version__ = "0.1.0"

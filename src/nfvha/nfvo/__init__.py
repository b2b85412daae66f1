"""NFVO side: placement of VNF instances on hosts."""

"""VNFM side: VNF lifecycle, operation occurrences, the manager daemon and its API."""

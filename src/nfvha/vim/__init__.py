"""NFVI/VIM side: what runs on each compute node (sandbox, CRIU, checkpoint store, agent)."""

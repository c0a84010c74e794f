"""Central: the upstream receiver, its store and index, and evidence export."""

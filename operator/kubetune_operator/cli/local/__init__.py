"""`kubetune run` without a cluster: one training or a whole search on this machine."""

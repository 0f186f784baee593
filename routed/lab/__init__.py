"""A whole routed cluster on one machine, built from network namespaces."""

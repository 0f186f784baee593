"""The node agent: registers the node, serves CNI, keeps the node's routes."""

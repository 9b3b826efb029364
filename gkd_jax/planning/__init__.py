"""The planner's internals: where a plan compiles (TPU topologies from a CPU host) and the batch
search."""

"""What the student minimises: the GKD divergences and their memory-lean forms, sparse (top-K)
teachers, the policy-gradient pieces and the rewards. Pure functions over arrays."""

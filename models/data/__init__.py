"""Dataset readers, the person-id split utility, the identity-balanced sampler and transforms."""

"""Address allocation: the ring, reclaiming, the store, and the trio service around them."""

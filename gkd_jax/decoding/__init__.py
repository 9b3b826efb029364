"""Decoding: the protocol a model family provides, the jitted sampler, beam search, and the
sampler's memory budget."""

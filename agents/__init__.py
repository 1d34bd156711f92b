"""Agents for matchenv: the siamese features used by recurrent search policies.

This package grows with the agent issue (recurrent policy, contrastive head, inference API)
and the baselines issue (classic matchers). Today it holds the siamese CNN feature extractor.
"""

from agents.siamese import SearchFeaturesExtractor, SiameseCNN

__all__ = ["SearchFeaturesExtractor", "SiameseCNN"]

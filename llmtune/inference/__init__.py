"""The inference engine every job uses to generate, score choices and classify, and its
token-budget batching."""

"""llmtune: turn a pre-trained language model into a solution, one validated YAML recipe per job."""

__version__ = "0.3.0"

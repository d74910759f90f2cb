"""The inference engines every job uses to generate, score choices and classify: the interface
they answer (`interface.InferenceEngine`), the one registry that picks an engine from `engine:`
(`registry`), the engines (hf in `engine.py`, vLLM, ONNX Runtime, llama.cpp) and engine hf's
token-budget batching."""

"""`llmtune export` to the formats people deploy: a Hugging Face folder, ONNX, GGUF.

Reads in the order an export happens: `landing` (where the export may go: never into an input of
the run, replacing only what an export wrote), `onnx_format` / `gguf_format` (the files),
`parity` (the gate: the export, loaded by its own runtime, against the run's model), `card`
(DIR/README.md and DIR/export.json), and `formats` (the verb, in that order).
"""

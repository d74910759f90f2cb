"""Models: loading (device, dtype, quantisation, adapters), inspection of a reference's head and
labels, scratch models, tuning methods, and saving / export."""

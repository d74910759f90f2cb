"""Reading users' data: files with file:line for every row, column mapping, splits, and the
sandboxed templates that turn rows into model input."""

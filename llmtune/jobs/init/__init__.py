"""`llmtune init`: a commented starter recipe for a kind (recipes/starter.py), fitted to the
user's own data file when one is given (from_data.py)."""

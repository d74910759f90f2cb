"""`llmtune rank CANDIDATES.jsonl`: people rank collected outputs, one prompt at a time, in a
terminal (`job.py` runs session.py's dialogue) or in a browser (`--web`, web.py); `--stats`
(stats.py) measures how much they agree.

The file is JSON lines, one row per prompt: `{"id", "prompt", "responses": [...], "ranking": ""}`
(rlhf's collect stage writes it; any annotation tool can). An empty or missing `ranking` means
"not ranked yet". With `--annotator NAME` each person's answer goes into the row's `rankings`
object (`{"alice": "A > B", "bob": "B > A"}`) and the single `ranking` is left alone. The whole
file is checked before anything is shown (exit 2 with file:line).

Every answer, typed or clicked, goes through `Candidates.answer`: the one grammar, the refusal of
a malformed ranking with its reason, and the save: the whole file is rewritten atomically (temp
file in the same folder, fsync, rename; the file keeps its permission bits), so a closed terminal
or a kill loses nothing and never leaves half a file. Rows that were not answered keep their line
exactly as it was. A lock beside the file keeps a second session out (exit 75), and a file that
another program changed while the session ran is never overwritten.
"""

from llmtune.jobs.rank.job import main

__all__ = ["main"]

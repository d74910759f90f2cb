"""`llmtune rank FILE --stats`: who ranked how much, and how much they agree (agreement.py)."""

from __future__ import annotations

from pathlib import Path

from llmtune.console import shown
from llmtune.data.agreement import agreement_of
from llmtune.data.annotators import all_tied, rankings_of
from llmtune.jobs.rank.book import read_rows


def print_stats(candidates: Path) -> dict[str, object]:
    """Print per-annotator counts, pairwise agreement, Krippendorff's alpha and the prompts
    people disagree on most, on stdout; return the figures."""
    _, rows = read_rows(Path(candidates))
    ranked = [(row.name, rankings_of(row.data, len(row.data["responses"]))) for row in rows]
    found = agreement_of(ranked)
    tied = {person: sum(all_tied(r[person]) for _, r in ranked if person in r) for person in found.annotators}
    some = sum(bool(people) for _, people in ranked)
    lines = [
        f"{shown(candidates)}: {len(rows)} rows; {some} ranked by someone, {found.shared_rows} by two or more"
    ]
    if found.annotators:
        width = max(len("annotator"), *(len(shown(p)) for p in found.annotators)) + 2
        lines += ["", f"{'annotator':<{width}}rows ranked  all tied"]
        for person, count in sorted(found.annotators.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"{shown(person):<{width}}{count:<13}{tied[person]}")
    lines.append("")
    if found.pairwise is None:
        lines.append(
            "agreement: no row is ranked by two people yet (rank with --annotator NAME, one name each)"
        )
    else:
        alpha = "undefined (every answer is the same)" if found.alpha is None else f"{found.alpha:.3f}"
        lines += [
            f"agreement over {found.shared_rows} rows ranked by two or more ({found.comparisons} comparisons):",
            f"  pairwise agreement    {found.pairwise:.3f}  (share of response pairs two people order the "
            "same way, ties included)",
            f"  Krippendorff's alpha  {alpha}  (ordinal; 1 = perfect agreement, 0 = what chance gives)",
        ]
        worst = found.most_disagreed()
        if worst:
            lines += ["", "prompts people disagree on most (pairwise agreement, annotators):"]
            lines += [f"  {shown(p.name)}  {p.agreement:.2f}  ({p.annotators})" for p in worst]
    print("\n".join(lines))
    return {**found.summary(), "rows": len(rows), "ranked_rows": some}

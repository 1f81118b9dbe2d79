"""Makes `AutoTokenizer.from_pretrained(MODEL)` work offline by pointing a Hugging Face cache entry
at the tokenizer directory lathe names in `get_info().model_data.tokenizer_id`
(shared/reference/cookbook-offline.md, "Tokenizer without a hub").

Usage: python hf_cache.py LATHE_URL MODEL HF_HOME
Creates HF_HOME/hub/models--ORG--NAME/{refs/main, snapshots/<rev>/<links>} and prints the directory.
Uses its own short SDK session (one rank-1 training client, then closed), straight to lathe.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import tinker


def main() -> None:
    url, model, hf_home = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sc = tinker.ServiceClient(base_url=url, api_key=os.environ.get("TINKER_API_KEY", "tml-cookbook"))
    tc = sc.create_lora_training_client(base_model=model, rank=1).result(timeout=300)
    tokenizer_dir = Path(tc.get_info().model_data.tokenizer_id)
    try:
        sc.close("success").result(timeout=30)
    except Exception:  # noqa: BLE001 - the tokenizer directory is all we came for
        pass
    if not (tokenizer_dir / "tokenizer.json").is_file():
        sys.exit(f"hf_cache: lathe's tokenizer_id {tokenizer_dir} has no tokenizer.json")
    rev = hashlib.sha1(str(tokenizer_dir).encode()).hexdigest()  # any 40-hex revision will do
    entry = hf_home / "hub" / ("models--" + model.replace("/", "--"))
    snap = entry / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(rev)
    for f in tokenizer_dir.iterdir():
        link = snap / f.name
        if f.is_file() and not link.exists():
            link.symlink_to(f)
    print(snap)


if __name__ == "__main__":
    main()

"""Reading dataset rows (JSON, JSONL or Parquet) and writing OpenRLHF prompt JSONL, for the prepare_* scripts."""

import json
import os


def read_rows(path):
    """A list of dict rows from a .json (a list, or {"data": [...]}), .jsonl or .parquet file."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: input file {path} does not exist")
    if path.endswith(".parquet"):
        import pyarrow.parquet  # installed with `datasets`, which OpenRLHF requires

        rows = pyarrow.parquet.read_table(path).to_pylist()
    elif path.endswith(".jsonl"):
        with open(path) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    else:
        with open(path) as handle:
            rows = json.load(handle)
        rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SystemExit(f"error: {path} must hold a list of JSON objects (rows)")
    return rows


def write_jsonl(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {path}")

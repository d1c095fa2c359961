#!/usr/bin/env python3
"""Writes the Parquet fixtures of agentcore-tasks' data tests, the way a Hugging Face dataset
stores them (pyarrow, snappy compression).

  pip install pyarrow && python scripts/make_parquet_fixtures.py

- struct_outcome.parquet: `expected_outcome` as a struct column (same types in every row).
- json_outcome.parquet: `expected_outcome` as JSON text (types differ between rows), with a
  `metadata` struct column.
"""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "crates/agentcore-tasks/tests/fixtures"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    struct_rows = {
        "query": ["Sort the list [5, 2, 8, 1]", "Reverse the list [1, 2, 3]"],
        "expected_outcome": [
            {"result": [1, 2, 5, 8], "test_passed": True},
            {"result": [3, 2, 1], "test_passed": True},
        ],
    }
    pq.write_table(pa.table(struct_rows), OUT / "struct_outcome.parquet", compression="snappy")
    json_rows = {
        "query": ["Find the maximum value in [10, 3, 7]", "Is 7 prime?", "Name the capital of France"],
        "expected_outcome": [
            json.dumps({"result": 10}),
            json.dumps({"result": True}),
            json.dumps({"result": "Paris"}),
        ],
        "metadata": [
            {"family": "max", "difficulty": 1},
            {"family": "prime", "difficulty": 2},
            {"family": "capital", "difficulty": 1},
        ],
    }
    pq.write_table(pa.table(json_rows), OUT / "json_outcome.parquet", compression="snappy")


if __name__ == "__main__":
    main()

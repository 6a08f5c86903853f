"""Reading dataset rows (JSON, JSONL or Parquet) and writing OpenRLHF prompt JSONL, for the prepare_* scripts.

Every problem with the input or the output ends the script with one line naming the file (and the line or row),
never a traceback.
"""

import argparse
import importlib.util
import json
import os
import tempfile

EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def positive_int(text):
    """argparse type for --max-rows: a count of rows, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more rows, got {value}")
    return value


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _parsed(text, where):
    """One JSON document; NaN, Infinity, nesting deeper than Python's recursion limit and integers over its
    4,300-digit limit end the script naming ``where``, as malformed JSON does."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"error: {where} is not JSON: {error.msg} (line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:
        raise SystemExit(f"error: {where} nests deeper than this reader allows") from None
    except ValueError as error:  # NaN/Infinity, or an integer beyond the digit limit
        raise SystemExit(f"error: {where}: {error}") from None


def read_rows(path):
    """A non-empty list of dict rows from a .json (a list, or {"data": [...]}), .jsonl or .parquet file."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: input file {path} does not exist")
    try:
        if path.endswith(".parquet"):
            try:
                import pyarrow  # installed with `datasets`, which OpenRLHF requires
                import pyarrow.parquet
            except ImportError:
                raise SystemExit(
                    f"error: reading {path} needs pyarrow: pip install pyarrow (or convert the file to JSONL)"
                ) from None

            try:
                rows = pyarrow.parquet.read_table(path).to_pylist()
            except pyarrow.ArrowException as error:
                raise SystemExit(f"error: {path} is not a readable Parquet file: {error}") from None
        elif path.endswith(".jsonl"):
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        rows.append(_parsed(line, f"{path} line {number}"))
        else:
            with open(path, encoding="utf-8") as handle:
                rows = _parsed(handle.read(), path)
            rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    except UnicodeDecodeError as error:
        raise SystemExit(f"error: {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SystemExit(f"error: {path} must hold a list of JSON objects (rows)")
    if not rows:
        raise SystemExit(f"error: {path} holds no rows")
    return rows


def check_user_prompt(messages, index):
    """The two converters agree: a prompt whose user turn is empty is refused, naming the row."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str) or not users[-1]["content"].strip():
        raise SystemExit(f"error: row {index} has an empty user prompt")


def tool_calling_rules():
    """examples/rewards/tool_calling.py as a module: the reward rules every tool-calling label must parse under."""
    spec = importlib.util.spec_from_file_location(
        "tool_calling_rules", os.path.join(EXAMPLES, "rewards", "tool_calling.py")
    )
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    return rules


def checked_label_calls(rules, label, where):
    """The label's calls as the reward rules parse them (None: no tool block); a label they cannot parse ends the
    script naming ``where``, since the reward file would raise on it in the middle of training."""
    try:
        return rules.label_calls(label)
    except ValueError as error:
        raise SystemExit(f"error: {where}: {error}") from None


def write_jsonl(rows, path, summary=None):
    if os.path.isdir(path):
        raise SystemExit(
            f"error: --output {path} is a directory; give a file name, e.g. {os.path.join(path, 'train.jsonl')}"
        )
    # Every row is encoded before anything is written, into a temporary file renamed over the output at the end:
    # a bad row leaves an existing output untouched and no partial file.
    lines = []
    for index, row in enumerate(rows):
        try:
            lines.append((json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
        except UnicodeEncodeError as error:  # a lone surrogate (from a \\ud800 escape in the input)
            raise SystemExit(
                f"error: row {index} holds a lone surrogate {error.object[error.start : error.end]!r}, which is no "
                f"UTF-8 text; nothing was written to {path}"
            ) from None
        except ValueError as error:  # NaN or ±inf: JSON has no such numbers
            raise SystemExit(f"error: row {index}: {error}; nothing was written to {path}") from None
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
        try:
            with os.fdopen(handle, "wb") as output:
                output.writelines(lines)
            umask = os.umask(0)  # mkstemp makes the file private: give it the permissions open() would
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        raise SystemExit(f"error: cannot write {path}: {error.strerror}") from None
    print(f"wrote {len(rows)} prompts to {path}" + (f" ({summary})" if summary else ""))

"""Check a reward file against a prompt dataset before anything starts: the dry run's reward check and
``python -m gd2po_openrlhf.reward_check``.

The first rows of the dataset are scored as the rollout actors score them: ``reward_func([query], [prompt],
[label])``, one rollout per call (OpenRLHF's ``SingleTurnAgentExecutor``), with ``query = prompt + response``. Each
row gets stand-in responses: its label (a right answer, when the dataset has labels), a placeholder (a wrong one),
and the user's own sample if given. Every answer is checked as the trainer checks it (``rewards.
dimensions_from_payload``: the declared keys, one finite number each); a bad one raises ValueError naming the file,
the row, the response and the key. Nothing of OpenRLHF is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import os
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from .rewards import MAX_ABS_REWARD, dimensions_from_payload, reward_auth_token

if TYPE_CHECKING:
    import torch

PLACEHOLDER_RESPONSE = "(a placeholder response that answers nothing)"
ROWS_CHECKED = 3


def load_reward_func(path: str) -> Callable:
    """``reward_func`` of the reward file ``path``, imported as OpenRLHF's rollout actors import it (also the reward
    server's). Raises FileNotFoundError, or ValueError naming the file for an import that fails or a file without
    ``reward_func``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward file {path} does not exist")
    spec = importlib.util.spec_from_file_location("gd2po_reward_file", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file: whatever its import raises is reported, named
        raise ValueError(f"reward file {path} failed to load: {type(error).__name__}: {error}") from error
    function = getattr(module, "reward_func", None)
    if not callable(function):
        defined = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_"))
        raise ValueError(
            f"reward file {path} defines no reward_func(queries, prompts, labels) (it defines "
            f"{defined or 'nothing'}): OpenRLHF calls that name"
        )
    return function


def dataset_rows(
    path: str, input_key: str, label_key: Optional[str], count: int = ROWS_CHECKED
) -> List[Tuple[str, str]]:
    """``(prompt, label)`` of the first ``count`` rows of a local .jsonl or .json prompt dataset (other formats
    through the ``datasets`` library); the label is "" without ``label_key``, as OpenRLHF gives it. Raises
    ValueError naming the row and the missing key."""
    path = os.path.expanduser(path)
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as file:
            text = file.read()
        try:
            records = json.loads(text) if path.endswith(".json") and text.lstrip().startswith("[") else None
        except json.JSONDecodeError:
            records = None
        if records is None:
            records = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip() and len(records) < count:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"--data.prompt_dataset {path} line {number} is not JSON: {error}") from None
    else:
        import datasets

        records = list(datasets.load_dataset(os.path.dirname(path) or ".", data_files=path, split="train"))
    rows = []
    for number, record in enumerate(records[:count], 1):
        for key in (input_key, label_key):
            if key is not None and (not isinstance(record, dict) or key not in record):
                raise ValueError(
                    f"--data.prompt_dataset {path} row {number} has no {key!r} "
                    f"(keys: {sorted(record) if isinstance(record, dict) else type(record).__name__}): check "
                    "--data.input_key and --data.label_key"
                )
        prompt = record[input_key]
        if not isinstance(prompt, str):  # a chat: its messages' text, as the reward file would see it roughly
            prompt = "\n".join(str(message.get("content", "")) for message in prompt if isinstance(message, dict))
        rows.append((prompt, "" if label_key is None else str(record[label_key])))  # OpenRLHF's label without a key
    return rows


def stand_in_responses(label: str, sample: Optional[str]) -> List[str]:
    """The responses a row is scored with: its label (if any), a placeholder, and the user's sample."""
    return [response for response in (label, PLACEHOLDER_RESPONSE, sample) if response]


def score_rows(
    reward_func: Callable,
    rows: Sequence[Tuple[str, str]],
    responses: Sequence[Sequence[str]],
    reward_keys: Sequence[str],
    source: str,
) -> torch.Tensor:
    """[rollouts, keys] rewards of each row's responses, row by row, one ``reward_func`` call per rollout."""
    import torch  # not at import: the reward server imports this module for load_reward_func

    scored = []
    for number, ((prompt, label), row_responses) in enumerate(zip(rows, responses), 1):
        for response in row_responses:
            where = f"{source} for row {number} with the response {response!r:.60}"
            payload = _call(reward_func, [prompt + response], [prompt], [label], where)
            values = dimensions_from_payload(payload, 1, list(reward_keys), where)
            # The trainer logs every other extra_logs value as a metric: one finite number each.
            for key, value in (payload.get("extra_logs") or {}).items():
                logged = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
                if not str(key).startswith("reward/") and not (
                    isinstance(logged, (int, float)) and not isinstance(logged, bool) and abs(logged) <= MAX_ABS_REWARD
                ):
                    raise ValueError(
                        f"{where} returned extra_logs[{key!r}] = {value!r:.60}: OpenRLHF logs every extra_logs value "
                        f"as a metric, so it must be a finite number with |x| <= {MAX_ABS_REWARD:g}"
                    )
            scored.append([values[key][0] for key in reward_keys])
    return torch.tensor(scored, dtype=torch.float64)


class ServerUnreachable(Exception):
    """The reward server did not answer (not up, or reachable only from the cluster): nothing to check here."""


def server_reward_func(url: str, timeout_s: float = 10.0) -> Callable:
    """A reward function that posts OpenRLHF's ``{query, prompts, labels}`` request to the reward server ``url`` and
    returns its answer: an HTTP error status raises ValueError with the server's message, no answer at all
    ``ServerUnreachable``."""

    def post(queries, prompts, labels):
        body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
        token = reward_auth_token()  # as the trainer's client sends it (--gd2po.reward_auth_token_file)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise ValueError(f"the server answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:  # refused, unknown host, timed out
            raise ServerUnreachable(f"{url} did not answer: {getattr(error, 'reason', error)}") from None

    return post


def _call(reward_func: Callable, queries: List[str], prompts: List[str], labels: List[str], where: str):
    """``reward_func``'s answer (an ``async def`` one awaited, as the trainer and the server await it)."""
    try:
        answer = reward_func(queries, prompts, labels)
        return asyncio.run(answer) if inspect.iscoroutine(answer) else answer
    except ServerUnreachable:
        raise
    except Exception as error:  # the user's function: reported, named
        raise ValueError(f"{where} raised {type(error).__name__}: {error}") from None


def batch_check(
    reward_func: Callable,
    rows: Sequence[Tuple[str, str]],
    responses: Sequence[Sequence[str]],
    reward_keys: Sequence[str],
    rewards: "torch.Tensor",
    source: str,
) -> str:
    """One call with every scored rollout at once, as the reward server calls it: a line saying whether it gives
    the rewards of the one-rollout calls (the trainer's), or what differs."""
    import torch

    triples = [(prompt + response, prompt, label) for (prompt, label), row in zip(rows, responses) for response in row]
    queries, prompts, labels = (list(column) for column in zip(*triples))
    try:
        payload = _call(reward_func, queries, prompts, labels, f"{source} on a batch of {len(queries)}")
        values = dimensions_from_payload(payload, len(queries), list(reward_keys), f"{source}")
    except ValueError as error:
        return (
            f"note: one rollout per call works (the trainer's calls), but a batch of {len(queries)} does not, as the "
            f"reward server sends them: {error}. Return one value per rollout (docs/reward-functions.md)"
        )
    batched = torch.tensor([values[key] for key in reward_keys], dtype=torch.float64).T
    if not torch.equal(batched, rewards):
        return (
            f"note: a batch of {len(queries)} rollouts in one call (the reward server's) gives other rewards than one "
            "rollout per call (the trainer's): does the function read only queries[0]?"
        )
    return f"a batch of {len(queries)} rollouts in one call (the reward server's calls) gives the same rewards"


def rewards_table(
    rows: Sequence[Tuple[str, str]],
    responses: Sequence[Sequence[str]],
    reward_keys: Sequence[str],
    rewards: torch.Tensor,
    advantages: Optional[torch.Tensor] = None,
) -> List[str]:
    """One line per scored rollout: row, response, each key's reward (and the rollout's advantage)."""
    header = "    row  response" + " " * 34 + "".join(f"{key[:12]:>13}" for key in reward_keys)
    lines = [header + ("    advantage" if advantages is not None else "")]
    index = 0
    for number, row_responses in enumerate(responses, 1):
        for response in row_responses:
            shown = response.replace("\n", "\\n")  # one line per rollout
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            line = f"    {number:>3}  {shown:<42}" + "".join(f"{value:>13.4g}" for value in rewards[index].tolist())
            if advantages is not None:
                line += f"{advantages[index].item():>13.4g}"
            lines.append(line)
            index += 1
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.reward_check",
        description="Score the first rows of a prompt dataset with a reward file, as the trainer would, and check "
        "every answer: the declared keys, one finite number each.",
    )
    parser.add_argument("--reward-file", required=True, help="the file given to --reward.remote_url")
    parser.add_argument("--dataset", required=True, help="a local .jsonl or .json file (--data.prompt_dataset)")
    parser.add_argument("--reward-keys", nargs="+", required=True, help="as --gd2po.reward_keys")
    parser.add_argument("--input-key", default="input", help="as --data.input_key (default: input)")
    parser.add_argument("--label-key", default=None, help="as --data.label_key")
    parser.add_argument("--response", default=None, help="a response of your own, scored for every row too")
    parser.add_argument("--rows", type=int, default=ROWS_CHECKED, help=f"rows to score (default {ROWS_CHECKED})")
    args = parser.parse_args(argv)
    try:
        reward_func = load_reward_func(args.reward_file)
        rows = dataset_rows(args.dataset, args.input_key, args.label_key, args.rows)
        responses = [stand_in_responses(label, args.response) for _, label in rows]
        rewards = score_rows(reward_func, rows, responses, args.reward_keys, f"reward file {args.reward_file}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.reward_file} on the first {len(rows)} rows of {args.dataset}: every answer has the keys and values")
    print("\n".join(rewards_table(rows, responses, args.reward_keys, rewards)))
    print(batch_check(reward_func, rows, responses, args.reward_keys, rewards, f"reward file {args.reward_file}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

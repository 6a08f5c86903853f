"""Fuzzing with hypothesis: arbitrary shapes, dtypes and values for the estimator and for reward payloads.

The contract: a correct result (finite, of the right shape) or a ValueError naming the problem; never another
exception, never NaN.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gd2po_openrlhf import GD2POConfig, compute_advantages
from gd2po_openrlhf.integration.reward_client import count_mismatch
from gd2po_openrlhf.rewards import dimensions_from_payload

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.bool,
    torch.uint8,
]
SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, -3.4e38, 1e300, math.nan, math.inf, -math.inf])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), SPECIAL, st.integers(-(10**6), 10**6))


@st.composite
def estimator_inputs(draw):
    """Mostly well-formed batches (so that real results get checked), each with at most one kind of corruption."""
    corruption = draw(
        st.sampled_from(
            [None, None, None, "values", "rewards_shape", "mask_shape", "mask_values", "dtype", "empty", "groups"]
        )
    )
    group_size = draw(st.integers(1, 4) if corruption == "groups" else st.integers(2, 4))
    rows = draw(st.integers(1, 9)) if corruption == "groups" else group_size * draw(st.integers(1, 3))
    dims, width = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    rewards_shape, mask_shape = (rows, dims), (rows, width)
    if corruption == "rewards_shape":
        rewards_shape = draw(st.sampled_from([(rows,), (rows, dims, 1), (rows + 1, dims)]))
    if corruption == "mask_shape":
        mask_shape = draw(st.sampled_from([(rows,), (rows - 1, width), (rows, width, 1)]))
    if corruption == "empty":
        rewards_shape, mask_shape = draw(
            st.sampled_from([((0, dims), (0, width)), ((rows, 0), (rows, width)), ((rows, dims), (rows, 0))])
        )
    values = NUMBERS if corruption == "values" else st.floats(-1e6, 1e6) | st.integers(-3, 3)
    reward_values = draw(st.lists(values, min_size=math.prod(rewards_shape), max_size=math.prod(rewards_shape)))
    rewards = torch.tensor(reward_values, dtype=torch.float64).reshape(rewards_shape)
    rewards = rewards.to(draw(st.sampled_from(DTYPES if corruption == "dtype" else [torch.float32, torch.float64])))
    mask_choices = [0, 1, 1, 2, -1] if corruption == "mask_values" else [0, 1, 1, 1]
    mask_values = draw(
        st.lists(st.sampled_from(mask_choices), min_size=math.prod(mask_shape), max_size=math.prod(mask_shape))
    )
    mask = torch.tensor(mask_values, dtype=torch.float64).reshape(mask_shape)
    mask = mask.to(
        draw(st.sampled_from(DTYPES if corruption == "dtype" else [torch.float32, torch.int64, torch.bool]))
    )
    groups = torch.arange(rewards_shape[0]) // group_size
    if draw(st.booleans()):
        groups = groups[torch.randperm(len(groups), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))]
    if corruption == "dtype":
        groups = groups.to(draw(st.sampled_from([torch.int32, torch.float32, torch.bool])))
    weights = draw(st.none() | st.lists(st.floats(-1e6, 1e6), min_size=dims, max_size=dims).map(tuple))
    if corruption == "rewards_shape" and weights is not None:
        weights = weights + (1.0,)
    config = GD2POConfig(
        filter=draw(st.sampled_from(["none", "hard", "snr"])),
        snr_threshold=draw(st.floats(0, 1)),
        norm_by_std=draw(st.booleans()),
        whiten=draw(st.booleans()),
        weights=weights,
    )
    return rewards, groups, mask, config


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(estimator_inputs())
def test_estimator_gives_a_finite_result_or_a_value_error(inputs):
    rewards, groups, mask, config = inputs
    try:
        result = compute_advantages(rewards, groups, mask, config)
    except ValueError:
        return
    rows = rewards.shape[0]
    assert result.advantages.shape == mask.shape and result.advantages.dtype == torch.float32
    assert result.keep.shape == (rows,) and result.group_keep_ratio.shape == (rows,)
    assert torch.isfinite(result.advantages).all() and torch.isfinite(result.group_keep_ratio).all()
    assert all(math.isfinite(value) for value in result.metrics.values())


PAYLOAD_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def payloads(draw):
    """Mostly protocol-shaped payloads with one column per key; values well-formed or arbitrary."""
    keys = draw(
        st.lists(
            st.sampled_from(["correctness", "format", "length", "reward/x", ""]), min_size=1, max_size=3, unique=True
        )
    )
    length = draw(st.integers(0, 4))
    finite = st.floats(-1e6, 1e6) | st.integers(-3, 3)

    def column():
        good = st.lists(finite, min_size=length, max_size=length)
        return draw(
            st.one_of(
                good,
                good,
                good.map(tuple),
                good.map(
                    lambda v: torch.tensor(
                        v, dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]))
                    )
                ),
                good.map(np.array),
                finite,
                st.lists(NUMBERS, max_size=4),
                PAYLOAD_VALUES,
            )
        )

    columns = {key: column() for key in keys}
    form = draw(st.sampled_from(["rewards", "rewards", "extra_logs", "extra_logs", "junk"]))
    if form == "rewards":
        return {
            "rewards": columns,
            "extra_logs": draw(st.none() | st.dictionaries(st.text(max_size=8), PAYLOAD_VALUES, max_size=2)),
        }
    if form == "extra_logs":
        return {"rewards": draw(PAYLOAD_VALUES), "extra_logs": {f"reward/{k}": v for k, v in columns.items()}}
    return draw(PAYLOAD_VALUES)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads(),
    st.integers(1, 4),
    st.none()
    | st.none()
    | st.lists(st.sampled_from(["correctness", "format", "length"]), min_size=1, max_size=3, unique=True),
)
def test_payload_parsing_gives_finite_columns_or_a_value_error(payload, num_rollouts, reward_keys):
    try:
        dims = dimensions_from_payload(payload, num_rollouts, reward_keys, "fuzzed source")
    except ValueError as error:
        assert "fuzzed source" in str(error)  # every refusal names the source
        return
    assert dims and (reward_keys is None or list(dims) == reward_keys)
    for values in dims.values():
        assert len(values) == num_rollouts and all(type(v) is float and math.isfinite(v) for v in values)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(), st.integers(1, 4))
def test_reward_client_item_count_check_never_raises(payload, num_rollouts):
    # what the rollout actors' reward client checks on a server's JSON answer before anything else reads it
    answer = json.loads(json.dumps(payload, default=lambda value: value.tolist()))
    mismatch = count_mismatch(answer, num_rollouts)
    assert mismatch is None or isinstance(mismatch, str)
    if mismatch is None and isinstance(answer, dict) and isinstance(answer.get("rewards"), dict):
        # every dimension the answer carries holds one item per rollout (a bare number standing for one)
        assert all(
            len(v) == num_rollouts if isinstance(v, list) else num_rollouts == 1 or v is None
            for v in answer["rewards"].values()
        )


# ---- a policy's degenerate output through the shipped reward file and the API-Bank evaluation (issue 37)

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool_calling = _load(EXAMPLES / "rewards" / "tool_calling.py", "fuzzed_tool_calling")
eval_api_bank = _load(EXAMPLES / "eval" / "eval_api_bank.py", "fuzzed_eval_api_bank")

LABEL = '<think>call it</think>\n<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>'
PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<response>",
        "</response>",
        "\n",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": ',
        '"parameters": ',
        "[" * 2000,
        "{" * 2000,
        "9" * 5000,
        "1e400",
        "NaN",
        "-Infinity",
        "\\ud800",
        "\ud800",  # a lone surrogate, as a decoder with errors="surrogateescape" leaves invalid UTF-8
        "\udcff",
        "\x00\x01\x1b\x7f",
        "\u202e\u2028",
        "x" * 100_000,
        "<|im_end|>",
    ]
)
RESPONSES = st.one_of(
    st.lists(PIECES, max_size=12).map("".join),
    st.text(max_size=300),
    st.lists(st.one_of(PIECES, st.text(max_size=20)), max_size=20).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RESPONSES)
def test_the_tool_calling_reward_file_scores_any_policy_output_without_raising(response):
    scores = tool_calling.reward_func([response], [""], [LABEL])["extra_logs"]
    correctness, format_score, length = (scores[f"reward/{key}"][0] for key in ("correctness", "format", "length"))
    assert -3.0 <= correctness <= 3.0 and format_score in (0.0, 1.0) and 0.0 <= length <= 1.0
    assert all(math.isfinite(value) for value in (correctness, format_score, length))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RESPONSES, st.sampled_from(["paper", "exact"]))
def test_the_api_bank_evaluation_scores_any_policy_output_without_raising(response, scoring):
    metrics = eval_api_bank.evaluate([{"response": response, "label": LABEL, "level": "1"}], scoring)["overall"]
    accuracy = metrics["call_accuracy"]
    assert accuracy in (0.0, 100.0)  # one row: right or wrong, never an exception

"""Shared fixtures and the test categories (markers registered in setup.cfg).

Every test is one of:
- ``unit``: in-process, no Ray cluster, no subprocess (``make test-fast`` runs only these);
- ``ray``: starts a local Ray cluster;
- ``subprocess``: runs the launcher, a reward server, pip or the demo in a child process;
- ``e2e``: OpenRLHF's real launcher end to end (``make e2e``).
A test module or test marks itself ``ray``, ``subprocess`` or ``e2e``; every unmarked test is ``unit``.
"""

import pytest

CATEGORIES = ("ray", "subprocess", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(name) for name in CATEGORIES):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def ray_init_restored():
    """An in-process launch replaces ``ray.init`` (the dry run's exit, the token file's runtime_env): whatever a test
    leaves there, the next test in this worker gets Ray's own."""
    import ray

    init = ray.init
    yield
    ray.init = init


@pytest.fixture(scope="module")
def reward_file(request, tmp_path_factory) -> str:
    """A reward file whose ``reward_func`` returns the same rewards for every rollout: the test module's
    ``REWARD_FILE_REWARDS`` (a ``{key: value}`` dict), by default ``{"correctness": 1.0}``."""
    rewards = getattr(request.module, "REWARD_FILE_REWARDS", {"correctness": 1.0})
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(f"def reward_func(queries, prompts, labels):\n    return {{'rewards': {rewards!r}}}\n")
    return str(path)

"""YAML presets (``--gd2po.config``): a file of ``--gd2po.*`` / ``--cost.*`` values, checked and converted as the
parser converts the flags. The keys a preset may hold are the flag table's (``flags.FLAGS``, ``Flag.preset``).

Only the standard library at import time (``yaml`` only when a preset is given).
"""

from __future__ import annotations

import argparse
import os

from . import flags

MAX_PRESET_BYTES = 256 * 1024
MAX_PRESET_ALIASES = 64
MAX_PRESET_NODES = 10_000  # values and entries of a preset with every alias expanded
# Preset entries outside the gd2po:/cost: sections.
PRESET_REWARD_KEYS = ("reward.remote_url", "reward.model_name_or_path")


def _short(value, limit: int = 300) -> str:
    """``repr`` of a preset's value (``str`` of an error), cut to ``limit`` characters for an error message."""
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def load_preset(parser: argparse.ArgumentParser, path: str) -> dict:
    """``{dest: value}`` of a YAML preset, checked and converted as the parser would convert the flags.

    Sections: ``gd2po`` (``--gd2po.*``), ``cost`` (``--cost.*``) and ``reward`` (``remote_url`` and
    ``model_name_or_path`` only). A relative ``.py`` reward file is resolved against the preset's folder, so a
    preset works from any working directory. Raises ValueError naming the file and the offending key.
    """
    import yaml  # only when a preset is given: keeps the launcher's start-up free of it

    class UniqueKeyLoader(yaml.SafeLoader):
        """YAML keeps the last of two equal keys; a preset refuses them (one of the two values is a mistake).
        Keys merged in with ``<<: *anchor`` are not duplicates: the mapping's own keys override them, as YAML says."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_PRESET_BYTES + 1)
        if len(text) > MAX_PRESET_BYTES:
            raise ValueError(f"--gd2po.config {path}: larger than {MAX_PRESET_BYTES // 1024} kB, not a preset")
        # Nested aliases expand exponentially when a value is copied or printed ("billion laughs"): a preset needs
        # few.
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_PRESET_ALIASES:
            raise ValueError(f"--gd2po.config {path}: {aliases} YAML aliases; a preset may use {MAX_PRESET_ALIASES}")
        # Fewer aliases can still nest (3 per level over 22 levels: 3^22 values): count the expanded tree on the
        # composed graph, where an alias is the node it names, once per node.
        expanded, visiting = {}, set()

        def size(node) -> int:
            if id(node) not in expanded:
                if id(node) in visiting:
                    raise ValueError(f"--gd2po.config {path}: a YAML alias refers to itself, not a preset")
                visiting.add(id(node))
                children = node.value if isinstance(node, yaml.SequenceNode) else []
                if isinstance(node, yaml.MappingNode):
                    children = [part for pair in node.value for part in pair]
                total = 1
                for child in children:
                    total += size(child)
                    if total > MAX_PRESET_NODES:
                        break
                visiting.discard(id(node))
                expanded[id(node)] = total
            return expanded[id(node)]

        document = yaml.compose(text, Loader=yaml.SafeLoader)
        if document is not None and size(document) > MAX_PRESET_NODES:
            raise ValueError(
                f"--gd2po.config {path}: more than {MAX_PRESET_NODES} values once its YAML aliases are expanded, "
                "not a preset"
            )
        try:
            data = yaml.load(text, Loader=UniqueKeyLoader)
        except ValueError as error:  # an integer beyond Python's 4300 digits
            raise ValueError(f"--gd2po.config {path}: cannot read it: {_short(error, 1000)}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--gd2po.config {path}: cannot read it: {_short(error, 1000)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--gd2po.config {path}: expected sections gd2po/cost/reward, got {type(data).__name__}")
    actions = {action.dest: action for action in parser._actions}
    allowed = sorted(flag.dest for flag in flags.FLAGS if flag.preset)
    renamed = flags.renamed()  # former names of flags
    values = {}
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ValueError(f"--gd2po.config {path}: section {section!r} must be a mapping of option: value")
        for key, value in entries.items():
            dest = f"{section}.{key}"
            dest = renamed.get(dest, dest)
            if dest not in allowed and dest not in PRESET_REWARD_KEYS:
                raise ValueError(
                    f"--gd2po.config {path}: unknown key {dest!r}; allowed: "
                    f"{', '.join(allowed + list(PRESET_REWARD_KEYS))}"
                )
            action = actions[dest]
            try:
                # YAML's true/false are not numbers here, although float(True) would accept them as 1.0.
                numeric = action.type in (int, float)
                if action.nargs in ("+", "*"):
                    if not isinstance(value, list) or (action.nargs == "+" and not value):
                        raise ValueError(f"expected a non-empty list, got {_short(value)}")
                    if numeric and any(isinstance(v, bool) for v in value):
                        raise ValueError(f"expected numbers, got {_short(value)}")
                    value = [action.type(v) if action.type else v for v in value]
                elif numeric and isinstance(value, bool):
                    raise ValueError(f"expected a number, got {_short(value)}")
                elif action.type is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"expected a whole number, got {value!r}")  # int(2.7) would give 2
                elif action.const is True and action.nargs == 0:  # store_true
                    if not isinstance(value, bool):
                        raise ValueError(f"expected true or false, got {_short(value)}")
                elif value is not None and action.type is not None:
                    value = action.type(value)
                if action.choices is not None and value not in action.choices:
                    raise ValueError(f"expected one of {list(action.choices)}, got {_short(value)}")
            except (TypeError, ValueError, OverflowError) as error:  # OverflowError: float(10**400)
                raise ValueError(f"--gd2po.config {path}: {dest}: {_short(error, 1000)}") from None
            if dest == "reward.remote_url" and isinstance(value, str):
                here = os.path.dirname(os.path.abspath(path))
                value = ",".join(
                    os.path.normpath(os.path.join(here, url))
                    if url.endswith(".py") and not os.path.isabs(url)
                    else url
                    for url in value.split(",")
                )
            values[dest] = value
    return values

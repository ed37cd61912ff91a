"""The model a row will run, as the definition key a worker reports as loaded: what the row's
`preset`, `model`, or a headless row's `model_name` resolve to, read from the model definitions
(defaults/*.json and defaults/presets/*.json) without importing torch.

The claim prefers rows for the model a worker has loaded; a row naming a preset or the headless
spelling would get no preference if the claim compared the raw `params.model`. So the resolved key
is stored on the row (`tasks.resolved_model`): when the worker inserts it, or by maintenance for rows
a backend inserted. `resolved_model` is the one resolver; it may later call the parameter schema's.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFINITIONS_DIR = Path(__file__).resolve().parent.parent / "defaults"
PRESETS_FOLDER = "presets"
HEADLESS_KEY = "orchestrator_details"  # a headless travel row keeps its fields in here


@lru_cache(maxsize=4)
def _known(defaults_dir: Path) -> tuple[frozenset[str], dict[str, str]]:
    """(definition keys, {preset: definition key}) of a definitions folder."""
    definitions = frozenset(path.stem for path in defaults_dir.glob("*.json"))
    presets: dict[str, str] = {}
    for path in (defaults_dir / PRESETS_FOLDER).glob("*.json"):
        try:
            target = json.loads(path.read_text()).get("model")
        except (OSError, ValueError, AttributeError):
            continue  # the engine's registry reports a broken definition; affinity just skips it
        if isinstance(target, str):
            presets[path.stem] = target
    return definitions, presets


def resolved_model(params: Any, defaults_dir: Path = DEFINITIONS_DIR) -> str | None:
    """The definition key the row names (a preset wins over a model), or None when it names none
    that the definitions know."""
    if not isinstance(params, dict):
        return None
    definitions, presets = _known(defaults_dir)
    headless = params.get(HEADLESS_KEY) if isinstance(params.get(HEADLESS_KEY), dict) else {}
    preset = params.get("preset")
    if isinstance(preset, str) and preset in presets:
        return presets[preset]
    for name in (params.get("model"), params.get("model_name"), headless.get("model_name")):
        if isinstance(name, str) and name in definitions:
            return name
        if isinstance(name, str) and name in presets:
            return presets[name]
    return None

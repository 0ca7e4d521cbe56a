"""Read the JSON sidecar every exported model carries (``<artefact file name>.json``).

One small function so that ``export.sidecar.read_sidecar`` can replace it in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.engines.base import EngineError

SIDECAR_FORMAT = "cluda-deploy/exported-model"


def sidecar_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The sidecar of ``model_path`` as a dict, checked for the keys the server needs."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise EngineError(
            f"{path} not found: an exported model needs its sidecar JSON (label space, "
            "provenance) beside it; copy it along, or re-export with 'cluda export'"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not valid JSON ({exc}); re-export with 'cluda export'") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EngineError(
            f"{path} is not a cluda-deploy sidecar (no format={SIDECAR_FORMAT!r}); "
            "re-export with 'cluda export'"
        )
    if "label_space" not in data:
        raise EngineError(f"{path} lacks 'label_space'; re-export with 'cluda export'")
    return data

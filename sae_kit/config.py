"""JSON round-trip shared by every frozen config dataclass (train, autoencoder, analysis, demo …).

A config is written into its artifact's JSON and read back by `resume`, `load_autoencoder` and
friends; one implementation keeps the rules the same everywhere: unknown fields are an error
(the file was written by a newer sae-kit), and JSON lists become tuples where the field is one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TypeVar

from sae_kit.errors import SaeKitError

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclasses: to_dict / from_dict / to_json / from_json / replace."""

    config_name = "config"
    """How errors name this kind of config ("training config", "autoencoder config" …)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise SaeKitError(f"unknown {cls.config_name} field(s): {', '.join(unknown)}; "
                              "written by a newer sae-kit?")
        data = {name: tuple(value) if isinstance(value, list) and str(fields[name].type).startswith("tuple")
                else value for name, value in data.items()}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)

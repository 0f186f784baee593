"""IPAMConfig: cluster-wide IPAM behaviour. There is exactly one, named "default"."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from routed.resources.base import Model, Resource, field_error


class IPAMConfigSpec(Model):
    # True: a node never borrows addresses from another node's block.
    strict_affinity: bool = False
    max_blocks_per_host: int = Field(0, ge=0)  # 0 = unlimited
    auto_allocate_blocks: bool = True


class IPAMConfig(Resource):
    kind_name = "IPAMConfig"
    plural = "ipamconfigs"
    aliases = ("ipamconfig", "ipamconfiguration", "ipamconfigurations")

    kind: Literal["IPAMConfig"] = "IPAMConfig"
    spec: IPAMConfigSpec = Field(default_factory=IPAMConfigSpec)

    @model_validator(mode="after")
    def _only_default(self) -> IPAMConfig:
        if self.name != "default":
            raise field_error(
                f'IPAMConfig must be named "default", not "{self.name}"', "metadata.name"
            )
        return self

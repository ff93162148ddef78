"""The four backbones, by their config name."""

from __future__ import annotations

from tslrec.config import Config
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.backbones.caser import Caser
from tslrec.srs.backbones.fmlp import FMLPRec
from tslrec.srs.backbones.gru4rec import GRU4Rec
from tslrec.srs.backbones.sasrec import SASRec
from tslrec.srs.items import ItemRepresentation

BACKBONES: dict[str, type[Backbone]] = {"gru4rec": GRU4Rec, "caser": Caser, "sasrec": SASRec, "fmlp": FMLPRec}


def build_backbone(name: str, items: ItemRepresentation, n_users: int, config: Config) -> Backbone:
    settings = getattr(config.srs.backbones, name)
    return BACKBONES[name](items, n_users, config.srs.max_length, settings)

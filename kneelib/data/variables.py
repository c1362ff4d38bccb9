"""The study-variable configuration ``oai_variables.yaml``.

One documented file maps each variable a study needs (``womac_pain``,
``kl_grade``, ``min_medial_jsw_mm``, ...) to the OAI table and variable names;
entries whose OAI names could not be confirmed carry ``confirmed: false`` and a
note (chronic pain over 12 months, widespread pain). See the file's header for
the keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from kneelib.data.oai_layout import visit_code

__all__ = ["StudyVariable", "load_variable_config", "VARIABLES_FILE"]

#: The configuration shipped with kneelib.
VARIABLES_FILE = Path(__file__).with_name("oai_variables.yaml")

_LEVELS = ("subject", "knee_pair", "knee")


@dataclass(frozen=True)
class StudyVariable:
    """One study variable and where the OAI keeps it.

    Attributes
    ----------
    name : str
        Study name (key in the YAML file).
    level : str
        ``"subject"``, ``"knee_pair"`` (right/left variables per participant) or
        ``"knee"`` (per-knee table with ``SIDE``).
    table : str
        Table stem, possibly with ``{VV}`` (two-digit visit number).
    variable : str or None
        OAI variable (subject/knee level).
    right, left : str or None
        OAI variables of each knee (knee_pair level).
    components : tuple of str
        Several OAI variables combined (``combine: any``) into one subject value.
    visits : tuple of int
        Visit months at which it exists.
    confirmed : bool
        ``False`` for documented best guesses.
    """

    name: str
    level: str
    table: str
    variable: str | None = None
    right: str | None = None
    left: str | None = None
    components: tuple[str, ...] = ()
    combine: str | None = None
    visits: tuple[int, ...] = (0,)
    confirmed: bool = True
    description: str = ""
    note: str = ""
    paper: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def visit_templated(self) -> bool:
        """Whether the OAI names change with the visit (``{VV}`` in them)."""
        names = [self.table, self.variable or "", self.right or "", self.left or "", *self.components]
        return any("{VV}" in n for n in names)

    def _fill(self, text: str, visit_month: int) -> str:
        if not self.visit_templated:
            return text
        if int(visit_month) not in self.visits:
            raise ValueError(f"study variable {self.name} is not collected at month {visit_month} "
                             f"(visits {list(self.visits)} in {VARIABLES_FILE.name})")
        return text.replace("{VV}", f"{visit_code(visit_month):02d}")

    def table_for(self, visit_month: int) -> str:
        """Table stem at a visit (baseline table for non-templated variables)."""
        return self._fill(self.table, visit_month)

    def variables_for(self, visit_month: int) -> list[str]:
        """OAI variable names (one, or the components) at a visit."""
        names = list(self.components) if self.components else [self.variable or ""]
        return [self._fill(n, visit_month).upper() for n in names]

    def pair_for(self, visit_month: int) -> tuple[str, str]:
        """(right, left) OAI variable names at a visit (knee_pair level)."""
        return self._fill(self.right or "", visit_month).upper(), self._fill(self.left or "", visit_month).upper()


@lru_cache(maxsize=4)
def load_variable_config(path: str | Path | None = None) -> dict[str, StudyVariable]:
    """Read the study-variable configuration.

    Parameters
    ----------
    path : str or Path, optional
        YAML file; default the shipped ``oai_variables.yaml``.

    Returns
    -------
    dict of str to StudyVariable

    Raises
    ------
    ValueError
        On an entry with an unknown level or missing names.
    """
    path = Path(path) if path is not None else VARIABLES_FILE
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["variables"]
    config: dict[str, StudyVariable] = {}
    known = set(StudyVariable.__dataclass_fields__) - {"name", "extra"}
    for name, entry in raw.items():
        entry = dict(entry)
        level = entry.get("level")
        if level not in _LEVELS:
            raise ValueError(f"{path}: variable {name} has level {level!r}; expected one of {_LEVELS}")
        if level == "knee_pair" and not (entry.get("right") and entry.get("left")):
            raise ValueError(f"{path}: knee_pair variable {name} needs 'right' and 'left'")
        if level != "knee_pair" and not (entry.get("variable") or entry.get("components")):
            raise ValueError(f"{path}: variable {name} needs 'variable' or 'components'")
        kwargs = {k: v for k, v in entry.items() if k in known}
        kwargs["visits"] = tuple(int(v) for v in entry.get("visits", (0,)))
        kwargs["components"] = tuple(entry.get("components", ()))
        kwargs["paper"] = str(entry.get("paper", ""))
        config[name] = StudyVariable(name=name, extra={k: v for k, v in entry.items() if k not in known},
                                     **kwargs)
    return config

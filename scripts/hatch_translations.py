"""Hatchling build hook: compile the UI's message catalogs (web/translations/*/LC_MESSAGES/
messages.po) into .mo files and put them in the wheel beside the templates."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    """Runs before the wheel is assembled; editable installs use scripts/translations.sh."""

    def initialize(self, version: str, build_data: dict) -> None:
        """Compile every catalog into a build folder and force-include the results."""
        if self.target_name != "wheel" or version == "editable":
            return
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po

        root = Path(self.root) / "web" / "translations"
        out = Path(tempfile.mkdtemp(prefix="edgebox-mo-"))
        for po in sorted(root.glob("*/LC_MESSAGES/messages.po")):
            with po.open("rb") as source:
                catalog = read_po(source)
            mo = out / po.relative_to(root).with_suffix(".mo")
            mo.parent.mkdir(parents=True, exist_ok=True)
            with mo.open("wb") as target:
                write_mo(target, catalog)
            build_data["force_include"][str(mo)] = (
                f"edgebox/_web/translations/{po.relative_to(root).with_suffix('.mo').as_posix()}"
            )

"""``hydra/launcher=joblib`` runs nnlab's launcher: this entry replaces hydra-joblib-launcher's own.

Same options as the stock entry, nnlab's ``_target_``. Hydra's plugin scan executes every plugin
module, in an order that depends on the import path, so whichever of the two entries is stored
last would win. ``NnlabLauncherEntry`` (a search-path plugin, which Hydra instantiates after the
scan, every time it builds a config search path and before it composes anything) stores nnlab's
entry then, so it always wins. (A ``conf/hydra/launcher/joblib.yaml`` would win too, but Hydra
then validates it against the plugin's entry of the same name and prints a deprecation warning
in every job.) No ``from __future__ import annotations`` here: the scan executes this file
outside ``sys.modules``, where dataclasses cannot resolve string annotations.
"""
from dataclasses import dataclass

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

TARGET = "hydra_plugins.nnlab_launcher.joblib_launcher.NnlabJoblibLauncher"


@dataclass
class NnlabJoblibLauncherConf(JobLibLauncherConf):
    """hydra-joblib-launcher's options (n_jobs, ...), run by ``NnlabJoblibLauncher``."""

    _target_: str = TARGET


def register() -> None:
    """Store nnlab's ``hydra/launcher=joblib`` entry over the stock one."""
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=NnlabJoblibLauncherConf,
                                 provider="nnlab")


class NnlabLauncherEntry(SearchPathPlugin):
    """Adds no search path: registers nnlab's launcher entry once every plugin module has run."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register()

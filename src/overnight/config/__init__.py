"""Typed settings, read once.

Precedence, lowest first: built-in defaults, ``overnight.toml`` (or ``--config`` /
``OVERNIGHT_CONFIG``), ``OVERNIGHT_*`` environment variables, command-line flags.
Every field is documented in ``docs/configuration.md``, generated from these models
(``python -m overnight.config_docs``) and kept in step by a test.

One module per section: ``settings`` (the ``Settings`` object and ``load_settings``),
``engine``, ``server``, ``webhooks``, ``models`` (the model table and the built-in
models), ``generation`` (a model's default generation settings) and ``recommended``
(what a model's own files recommend). Import from ``overnight.config``; the modules are its layout, not its API.
"""

from overnight.config.engine import EngineSettings
from overnight.config.generation import GenerationDefaults, generation_defaults
from overnight.config.models import ModelSettings, builtin_aliases, builtin_models
from overnight.config.server import ServerSettings
from overnight.config.settings import CONFIG_FILE_NAME, ENV_PREFIX, Settings, load_settings
from overnight.config.webhooks import WebhookSettings

__all__ = [
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "EngineSettings",
    "GenerationDefaults",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "WebhookSettings",
    "builtin_aliases",
    "builtin_models",
    "generation_defaults",
    "load_settings",
]

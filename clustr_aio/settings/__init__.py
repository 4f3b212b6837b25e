"""Settings: built-in defaults (mirrored in ``config.toml``) < ``config.toml`` < ``.env`` < the
environment, each declared once with its parser (:mod:`.fields`).

Each setting is read from the highest layer that names it:

1. the TOML file ``CONFIG_FILE`` (default: ``config.toml`` in the working directory; a missing
   default file is fine, its values equal the built-in ones; a missing named file is an error),
2. the dotenv file ``ENV_FILE`` (default: ``.env`` in the working directory, missing is fine),
   read without modifying ``os.environ``,
3. environment variables with the setting's exact name (all others are ignored),
4. keyword overrides to :func:`load_settings` (already-typed values, for tests and the benchmark).

``CONFIG_FILE`` and ``ENV_FILE`` themselves are read from the environment only. Everything in
the two files is meant for this server, so a name there that is not a setting is an error that
suggests the closest one (``MAX_FILESIZE: unknown setting in /srv/.env (did you mean
MAX_FILE_SIZE?)``); the environment holds everybody's variables, so it is only read for the
settings' exact names.

Nothing is looked for beside the code: whether run from a checkout or installed into
site-packages, the server finds ``config.toml``, ``.env`` and the default ``uploads`` folder
where it is started (or beside ``CONFIG_FILE``).

Value syntax, shared by all layers (TOML may also use native booleans, integers and arrays):

- booleans: true/false, 1/0, yes/no, on/off, case-insensitive;
- sizes: see :func:`parse_size`;
- lists: comma-separated text, or a TOML array of strings;
- relative paths: relative to the directory of ``config.toml`` when they come from it, and for
  the built-in default (``uploads``: as if ``config.toml`` had it, which it does); relative to
  the working directory when they come from ``.env`` or the environment.

A bad value raises :class:`SettingsError` whose text is one line naming the setting, e.g.
``PORT: expected an integer from 1 to 65535, got 'abc' (from environment)``.

``tomllib`` reads config.toml, python-dotenv the ``.env`` file, and :class:`Settings` parses
the values: one parser per setting and nothing else, since the syntax above is stricter than a
lax coercion (TOML's ``PORT = true`` or ``WORKERS = 2.0`` are errors) and friendlier than a
strict one (text from the environment is parsed). :func:`load_settings` stacks the layers,
because it must know which one each value came from: errors name it, and relative paths are
anchored at its directory.

Adding a setting is one declaration in :class:`Settings`: the field, its type (a ``Parser`` in
``Annotated``), and ``_setting(default_text, description)``. ``SETTINGS``, the README table and
the loader all derive from it; add the key to ``config.toml`` too (a test checks it).
"""

from clustr_aio.settings.loading import DEFAULT_CONFIG_FILE, SettingsError, load_settings
from clustr_aio.settings.model import SETTINGS, Settings, SettingSpec, settings_table_markdown
from clustr_aio.settings.values import IPNetwork, parse_size

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "SETTINGS",
    "IPNetwork",
    "SettingSpec",
    "Settings",
    "SettingsError",
    "load_settings",
    "parse_size",
    "settings_table_markdown",
]

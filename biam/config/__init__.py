"""Configuration: ``load_cfg(config_file, opts)`` builds a frozen, checked yacs config."""

from .defaults import (
    FREE_ON_RESUME, KEY_RULES, ConfigError, KeyRule, add_config_arguments, check_cfg, dump_cfg, get_cfg_defaults,
    load_cfg,
)

__all__ = ["ConfigError", "add_config_arguments", "check_cfg", "dump_cfg", "get_cfg_defaults", "load_cfg",
           "KEY_RULES", "KeyRule", "FREE_ON_RESUME"]

# spaceone-core merges this module into its configuration at start-up.
LOG = {
    "loggers": {"spaceone": {"level": "INFO", "handlers": ["console"]}},
}

"""What every stage shares: the scripts' command-line conventions (cli), the config groups'
schemas (config), loading a model folder or hub name (modeling)."""

"""CLI subcommands, one module per job; ``lwmkit/cli.py`` registers them."""

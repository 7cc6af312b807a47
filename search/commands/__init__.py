"""The commands that read a study or run one training: `tune status`, `tune best` (and its export),
`tune dashboard`, `tune train`. `search/cli.py` parses their options and calls them."""

"""Sub-commands of ``cvtasks``: each module has ``add_parser(subparsers)`` and sets ``run``."""

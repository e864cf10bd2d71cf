"""Sub-commands of ``cvtasks``: each module has ``add_arguments(parser)``, which sets ``run``;
services/cli.py names the commands."""

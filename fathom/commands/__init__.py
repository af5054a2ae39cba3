"""One module per `fathom` subcommand: `add_arguments(parser)` and `run(args) -> int`."""

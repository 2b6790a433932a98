//! One module per `ktrace` subcommand.

"""Command-line adapters: parse arguments, call the library, print, map errors to exit codes."""

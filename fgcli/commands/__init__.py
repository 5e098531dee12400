"""One module per CLI command: each parses its flags and calls one library function."""

"""The built-in methods, one folder each under `fgcli/methods/<name>/`: `model.py` registers the Method class,
`config.py` (optional) declares its config section. Light (the config layer reads it): adding a method is its
folder plus its name here."""

BUILTIN_MODULES = ("baseline", "herbs", "mge", "probe")

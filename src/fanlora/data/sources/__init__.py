"""The data sources, one file each; importing this package registers their tasks, in the
order ``fanlora data list`` shows them."""

from fanlora.data.sources import bigbench, olmo, olmo_eval, sharegpt, spider  # noqa: F401

"""`fanlora bench tenants` as a script (see `fanlora bench tenants --help` and bench/README.md).

python bench/tenants.py --setting SETTING.json --out bench/results/tenants.json
"""

import sys

from fanlora.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "tenants", *sys.argv[1:]]))

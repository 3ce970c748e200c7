"""`fanlora bench decode` as a script (see `fanlora bench decode --help` and bench/README.md).

python bench/decode.py --setting SETTING.json --out bench/results/decode.json
"""

import sys

from fanlora.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "decode", *sys.argv[1:]]))

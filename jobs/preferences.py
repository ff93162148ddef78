"""spark-submit entry point of the preferences stage: `spark-submit jobs/preferences.py --dataset beauty [key=value ...]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["preferences", *sys.argv[1:]]))

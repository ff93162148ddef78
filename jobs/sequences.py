"""spark-submit entry point of the sequences stage: `spark-submit jobs/sequences.py --dataset beauty [key=value ...]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["sequences", *sys.argv[1:]]))

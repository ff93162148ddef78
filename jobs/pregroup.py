"""spark-submit entry point of the pregroup stage: `spark-submit jobs/pregroup.py --dataset beauty [key=value ...]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["pregroup", *sys.argv[1:]]))

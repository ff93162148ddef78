"""spark-submit entry point of the ingest stage: `spark-submit jobs/ingest.py --dataset beauty [key=value ...]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))

"""Entry point of the downstream recommender training: `python jobs/train_srs.py --dataset beauty train.seeds=[1,2,3]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Entry point of the pretrain stage (stage 0, torch on the driver): `python jobs/pretrain.py --dataset beauty [key=value ...]`."""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))

"""spark-submit entry point of stage 2, item inference: `spark-submit jobs/infer_items.py --dataset beauty [key=value ...]`.

The executors load the model folder named in the `models` table: on a cluster, llm.artifacts must be storage every
node can read (a shared file system), and the base model must be loadable there (bundled, a folder, or a hub id).
"""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))

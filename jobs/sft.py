"""Entry point of the SFT stage for launchers, one process per GPU or CPU worker:

    deepspeed --num_gpus 8 jobs/sft.py --dataset beauty llm.model=/models/llama-2-13b
    torchrun --nproc_per_node 2 jobs/sft.py --dataset beauty
    python jobs/sft.py --dataset beauty                    # starts sft.processes workers itself (torchrun)
"""

import sys

from tslrec.cli import main

if __name__ == "__main__":
    # the deepspeed launcher appends --local_rank=N; the same number is in the LOCAL_RANK variable
    sys.exit(main(["sft", *(a for a in sys.argv[1:] if not a.startswith("--local_rank"))]))

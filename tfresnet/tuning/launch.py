"""keras-tuner's distributed mode: this process's role, or a chief and workers started here."""

import os
import socket
import subprocess
import sys
import time

from tfresnet.errors import UserError
from tfresnet.runtime.devices import visible_gpu_ids


def tuner_role():
    """``"chief"`` or ``"worker"`` under keras-tuner's distributed mode, else None."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    if not tuner_id:
        return None
    missing = [name for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
               if not os.environ.get(name)]
    if missing:
        raise UserError(f"KERASTUNER_TUNER_ID is set but {' and '.join(missing)} is not; set "
                        "all three on the chief and on every worker, or none")
    return "chief" if tuner_id == "chief" else "worker"


def free_ports(count):
    """``count`` distinct free TCP ports on 127.0.0.1 (for the processes of a local
    cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker_environments(workers, gpu_ids):
    """The variables each process of a parallel search gets on top of this one's, the
    chief's first: each worker its own GPU of ``gpu_ids`` when there are enough, else a
    round-robin share with TF_FORCE_GPU_ALLOW_GROWTH, so that no two workers preallocate
    the same GPU's memory; the chief (the oracle) no GPU. Without GPUs, nothing is set."""
    if not gpu_ids:
        return [{} for _ in range(workers + 1)]
    shared = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if workers > len(gpu_ids) else {}
    return [{"CUDA_VISIBLE_DEVICES": ""}, *({"CUDA_VISIBLE_DEVICES": gpu_ids[i % len(gpu_ids)],
                                            **shared} for i in range(workers))]


def run_in_parallel(argv, workers):
    """Runs this search as keras-tuner's chief plus ``workers`` workers on 127.0.0.1, each
    worker on its own GPU (if any; shared when fewer); returns the first non-zero exit
    status, else 0."""
    argv = list(argv)
    at = next(i for i, a in enumerate(argv) if a.startswith("--parallel"))
    del argv[at:at + (1 if "=" in argv[at] else 2)]
    port = str(free_ports(1)[0])  # for the oracle
    gpu_ids = visible_gpu_ids()  # of this process's CUDA_VISIBLE_DEVICES, read without CUDA
    if 0 < len(gpu_ids) < workers:
        print(f"{workers} workers share {len(gpu_ids)} GPU(s) in turn, each growing its GPU "
              "memory as needed (TF_FORCE_GPU_ALLOW_GROWTH)")
    processes = []
    for tuner_id, extra in zip(["chief", *(f"tuner{i}" for i in range(workers))],
                               worker_environments(workers, gpu_ids)):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id,
               "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port, **extra}
        processes.append(subprocess.Popen([sys.executable, "-m", "tfresnet.tune", *argv],
                                          env=env))
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()

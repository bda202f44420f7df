"""Scale out: the Accelerate configs in recipes/configs/accelerate/, multi-process data parallel on CPU (gloo) with
the same weights as one process, Accelerate's FSDP2 path, checkpoint + resume across processes, and launches that
do not match the machine.

Every multi-process run here is a real ``accelerate launch`` of ``recipes/continue_pretrain.py`` (2 processes; each
costs ~10 s of imports). The model is a tiny GPT-2 (from scratch; for FSDP2 loaded from a saved plain checkpoint)
with daGPAM attention (parameters W- and lambda in every layer), dropout off, the real GPT-2 tokenizer (offline
asset ``gpt2-tokenizer``).

Why the weights can match exactly: with Accelerate's seedable sampler every process draws the same permutation,
and each process takes every N-th batch of size B of it (rank r: batches r, r+N, ...). One step of N processes x B
x accumulation A therefore covers the first N*B*A examples of the permutation, the same set as one process with
batch N*B (or B x accumulation N*A); the loss is token-count normalised over the whole step, so the update is the
same up to float rounding. A different batch (e.g. one process with batch B) moves the weights by ~0.3, four
orders of magnitude beyond the 1e-5 tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from hf_attnswap.data.assets import is_prepared
from hf_attnswap.training import loop
from hf_attnswap.training.loop import LaunchError, check_launch, run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "continue_pretrain.py"
CONFIGS = ROOT / "recipes" / "configs" / "accelerate"
FORCE_FSDP = Path(__file__).resolve().parent / "recipe_utils.py"
CONFIG_NAMES = ["cpu", "single_gpu", "ddp", "fsdp", "deepspeed_zero2"]
STEPS = 4

needs_tokenizer = pytest.mark.skipif(not is_prepared("gpt2-tokenizer"),
                                     reason="needs the offline GPT-2 tokenizer: run `attnswap prepare-assets`")

# Environment variables that `accelerate launch` / torchrun / mpirun set: none may leak into the runs from outside.
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
               "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "FSDP_")) and k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", **extra)
    return env


def _launch(config: str, *args: str, cpu: bool = True, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``[ACCELERATE_USE_CPU=1] accelerate launch --config_file <config>.yaml <args>``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(**({"ACCELERATE_USE_CPU": "1"} if cpu else {})), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _load_recipe():
    spec = importlib.util.spec_from_file_location("continue_pretrain_distributed", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    """40 short documents of plain words; 36 train (~90 blocks of 16 tokens), 4 held out for validation."""
    g = torch.Generator().manual_seed(0)
    words = ("the cat sat on a mat while dogs ran in the park and birds sang over green hills near old towns "
             "with rivers bridges roads and quiet farms").split()
    docs = [" ".join(words[int(i)] for i in torch.randint(len(words), (int(n),), generator=g))
            for n in torch.randint(20, 60, (40,), generator=g)]
    path = tmp_path_factory.mktemp("distributed_data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _args(train_file: Path, out: Path, batch: int, accumulation: int, *extra: str, clip: str = "1.0",
          pretrained: Path | None = None) -> list[str]:
    # Adam with eps >> |g| is plain SGD (update = lr/eps * g = g), so float noise in gradients that are zero in
    # exact arithmetic (the key bias: softmax ignores it) is not blown up to a full Adam step. Gradient clipping to
    # norm 1 is active in every step (the gradient norm is 1.3-2.4).
    model = (["--model_name_or_path", str(pretrained)] if pretrained is not None else
             ["--model_type", "gpt2", "--config_overrides",
              "n_layer=2,n_head=2,n_embd=32,n_positions=64,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"])
    return [*model, "--tokenizer_name", "gpt2-tokenizer", "--attn", "dagpam:lambda_init=0.1",
            "--train_file", str(train_file), "--validation_split_percentage", "10", "--block_size", "16",
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation),
            "--max_train_steps", str(STEPS), "--learning_rate", "100", "--adam_epsilon", "100", "--max_grad_norm", clip,
            "--eval_before_training", "false", "--seed", "0", "--disable_progress_bar", "--output_dir", str(out), *extra]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _log(folder: Path) -> list[dict]:
    return [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _mechanism_init() -> dict[str, torch.Tensor]:
    """daGPAM's parameters before training (deterministic: lambda = 0.1, W- = -I), by name."""
    import hf_attnswap  # noqa: F401
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=64, n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="dagpam", attnswap={"lambda_init": 0.1})
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".attnswap." in n}


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    """Every weight within ``atol``; the mechanism's parameters, whose updates are small (lambda moves by ~1e-5,
    W- by ~2e-6), also to 0.1 % of their update, so a rank that does not update its shard of them is caught."""
    wa, wb = _weights(a), _weights(b)
    # FSDP2's gathered state dict also carries the tied lm_head (equal to wte, and reloaded as tied)
    if "lm_head.weight" in wa and "lm_head.weight" not in wb:
        torch.testing.assert_close(wa.pop("lm_head.weight"), wa["transformer.wte.weight"], rtol=0, atol=0)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    init = _mechanism_init()
    assert set(init) <= set(wa) and len(init) == 4
    for k, start in init.items():
        update = (wb[k] - start).abs().max().item()
        assert update > 0, f"{k} was not trained"
        torch.testing.assert_close(wa[k] - start, wb[k] - start, rtol=0, atol=1e-3 * update,
                                   msg=lambda m, k=k: f"{k} (update): {m}")


def _assert_same_run(a: Path, b: Path) -> None:
    """Same per-step loss, tokens and final validation perplexity (the token counts prove the process count)."""
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, STEPS + 1))
    assert [r["tokens_seen"] for r in la] == [r["tokens_seen"] for r in lb]
    for ra, rb in zip(la, lb):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    ra, rb = (json.loads((x / "results.json").read_text()) for x in (a, b))
    assert ra["final_eval"] == pytest.approx(rb["final_eval"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# the configs


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_accelerate_config_parses_and_documents_its_launch(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))  # Accelerate's own loader: unknown top-level keys are errors
    header = path.read_text().split("\ncompute_environment:")[0]
    assert f"--config_file recipes/configs/accelerate/{name}.yaml" in header and "recipes/continue_pretrain.py" in header
    assert "--config recipes/configs/" in header
    # every fsdp_/deepspeed_ key must be an `accelerate launch` option, or Accelerate drops it without a word
    options = {a.dest for a in launch_command_parser()._actions}
    for key in [*config.fsdp_config, *config.deepspeed_config]:
        assert key in options, f"{name}.yaml: {key} is not an accelerate launch option"
    expected = {"cpu": ("MULTI_GPU", 2, "no"), "single_gpu": ("NO", 1, "bf16"), "ddp": ("MULTI_GPU", 8, "bf16"),
                "fsdp": ("FSDP", 8, "bf16"), "deepspeed_zero2": ("DEEPSPEED", 8, "bf16")}[name]
    assert (config.distributed_type.name, config.num_processes, config.mixed_precision) == expected
    assert config.use_cpu == (name == "cpu")
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_reshard_after_forward"] is True  # FSDP2's full shard
        assert config.fsdp_config["fsdp_sync_module_states"]  # required by cpu_ram_efficient_loading
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# data parallel on CPU: 2 processes == 1 process with the same global batch


@pytest.fixture(scope="module")
def ddp_run(train_file, tmp_path_factory) -> Path:
    """2 processes x batch 1 x accumulation 2 (so the no_sync path runs), checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    _ok(_launch("cpu", str(RECIPE), *_args(train_file, out, 1, 2, "--checkpointing_steps", "2")))
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A saved plain-softmax GPT-2 of the same size (the recipe swaps in daGPAM when loading it, so W- and lambda
    are new parameters that are not in the checkpoint)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    path = tmp_path_factory.mktemp("pretrained") / "gpt2"
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def single_runs(train_file, pretrained, tmp_path_factory) -> dict[str, Path]:
    """One process, in this pytest process: batch 4 x accumulation 1, batch 2 x accumulation 2, and (the reference
    for FSDP2) batch 4 from the pretrained checkpoint with a clipping threshold that is never reached."""
    recipe = _load_recipe()
    runs = {}
    for name, batch, accumulation, clip, model in (("batch4", 4, 1, "1.0", None), ("batch2_accum2", 2, 2, "1.0", None),
                                                   ("pretrained_batch4_noclip", 4, 1, "100", pretrained)):
        out = tmp_path_factory.mktemp(name) / "run"
        AcceleratorState._reset_state(True)
        argv = _args(train_file, out, batch, accumulation, clip=clip, pretrained=model)
        assert run_recipe(lambda: recipe.main(argv)) == 0
        runs[name] = out
    AcceleratorState._reset_state(True)
    return runs


@needs_tokenizer
@pytest.mark.parametrize("single", ["batch4", "batch2_accum2"])
def test_two_cpu_processes_give_the_weights_of_one_process_with_the_same_global_batch(ddp_run, single_runs, single):
    _assert_same_weights(ddp_run, single_runs[single], atol=1e-5)
    _assert_same_run(ddp_run, single_runs[single])


@needs_tokenizer
def test_every_process_registers_the_mechanism_before_building_the_model(ddp_run):
    """Rank 1 built its model with attn_implementation="dagpam" too (DDP checks that every rank has the same
    parameters), and the mechanism's parameters were trained and saved with the model."""
    import hf_attnswap  # noqa: F401
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ddp_run)
    assert model.config.attnswap["mechanism"] == "dagpam"
    lam = [p for n, p in model.named_parameters() if n.endswith("lambda_param")]
    assert len(lam) == 2 and all(abs(float(p.detach().mean()) - 0.1) > 1e-6 for p in lam)  # moved by ~1e-5
    assert all(r["tokens_seen"] == r["step"] * 4 * 16 for r in _log(ddp_run)), "2 processes x 2 micro-batches x 16"


@needs_tokenizer
def test_resume_under_ddp_gives_the_weights_of_the_uninterrupted_run(ddp_run, tmp_path, train_file):
    """Resume the 2-process run from its step-2 checkpoint into a fresh folder: bit-identical final weights."""
    out = tmp_path / "resumed"
    ckpt = ddp_run / "checkpoints" / "step_00000002"
    text = _ok(_launch("cpu", str(RECIPE), *_args(train_file, out, 1, 2, "--checkpointing_steps", "2",
                                                  "--resume_from_checkpoint", str(ckpt))))
    assert f"resumed from {ckpt} (step 2 of {STEPS})" in text
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    _assert_same_weights(out, ddp_run, atol=0)
    assert [r["loss"] for r in _log(out)] == [r["loss"] for r in _log(ddp_run)][2:]


# ---------------------------------------------------------------------------------------------------------------------
# FSDP2


@needs_tokenizer
def test_fsdp2_code_path_trains_to_the_same_weights_and_resumes_from_sharded_checkpoints(single_runs, pretrained,
                                                                                         tmp_path, train_file):
    """fsdp.yaml on 2 CPU processes, continued pretraining of a saved model. Accelerate 1.15 would run it as plain
    DDP (it enables FSDP only on GPU process groups); tests/recipe_utils.py lifts that gate, so this is
    Accelerate's real FSDP2 path on gloo, with cpu_ram_efficient_loading: rank 1 loads the checkpoint as empty
    tensors and the mechanism's new parameters on the meta device, and gets every value from rank 0.

    The clipping threshold (100) is computed against but never reached: the sharded gradient norm is not the
    unsharded one to float32 accuracy (torch's float32 CPU vector norm of the 50257 x 32 embedding gradient is off
    by ~3e-5 relative, and differently for two shards than for the whole), so real clipping moves the weights
    ~1e-5 apart after 4 steps; without it they agree to ~1e-7."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    launch = ("fsdp", "--num_processes", "2", "--mixed_precision", "no", str(FORCE_FSDP), str(RECIPE))
    text = _ok(_launch(*launch, *_args(train_file, full, 2, 1, "--checkpointing_steps", "2", clip="100",
                                       pretrained=pretrained)))
    for rank in (0, 1):
        assert f"[recipe_utils] rank {rank}: distributed_type=FSDP fsdp2=True device=cpu" in text, text[-3000:]
    _assert_same_weights(full, single_runs["pretrained_batch4_noclip"], atol=1e-5)
    _assert_same_run(full, single_runs["pretrained_batch4_noclip"])
    ckpt = full / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _ok(_launch(*launch, *_args(train_file, resumed, 2, 1, "--checkpointing_steps", "2",
                                "--resume_from_checkpoint", str(ckpt), clip="100", pretrained=pretrained)))
    _assert_same_weights(resumed, full, atol=0)


def test_fsdp_config_on_cpu_is_plain_ddp_in_accelerate(tmp_path):
    """What fsdp.yaml gives on CPU without the helper: Accelerate reports MULTI_CPU and leaves FSDP off, without a
    warning (documented in fsdp.yaml). If a later Accelerate supports FSDP on CPU, this fails: update the docs."""
    script = tmp_path / "state.py"
    script.write_text("from accelerate import Accelerator\na = Accelerator()\n"
                      "print(f'<STATE {a.process_index} {a.num_processes} {a.distributed_type.name} {a.is_fsdp2}>', "
                      "flush=True)\n")
    text = _ok(_launch("fsdp", "--num_processes", "2", "--mixed_precision", "no", str(script)))
    assert sorted(re.findall(r"<STATE [^>]*>", text)) == ["<STATE 0 2 MULTI_CPU False>", "<STATE 1 2 MULTI_CPU False>"]


# ---------------------------------------------------------------------------------------------------------------------
# launches that do not match the machine


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_config_on_a_cpu_machine_stops_every_process_before_compute(tmp_path):
    """ddp.yaml here: Accelerate itself starts the processes (torchrun) and does not object; every process, seeing
    no CUDA, would otherwise fall back to an independent single-process run. The recipe stops each with exit code 2
    and `error: ...` before loading data or model."""
    out = tmp_path / "never"
    proc = _launch("ddp", "--num_processes", "2", str(RECIPE), "--model_type", "gpt2", "--tokenizer_name",
                   "gpt2-tokenizer", "--train_file", str(tmp_path / "not_read.jsonl"), "--output_dir", str(out),
                   cpu=False, timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert errors and all("asks for 2 GPU processes, but this machine has no CUDA device" in e for e in errors), proc.stdout
    assert "ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/configs/accelerate/cpu.yaml" in errors[0]
    assert "exitcode  : 2" in proc.stdout  # torchrun's report of the first failed process
    assert "Traceback" not in proc.stdout.split("error: ")[0] and not out.exists()


def _accelerate_env(monkeypatch, *launch_args: str) -> list[str]:
    """Set the environment that `accelerate launch <launch_args> script.py` gives the script it starts (through
    Accelerate's own simple-launcher code, without running anything); return the command it would run."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    for k in list(os.environ):
        if k.startswith(("ACCELERATE_", "FSDP_")) or k in LAUNCH_VARS:
            monkeypatch.delenv(k)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args([*launch_args, "script.py"]))
    cmd, env = prepare_simple_launcher_cmd_env(args)
    for k, v in env.items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    return cmd


def test_cpu_num_processes_launch_starts_one_process_and_is_refused(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` runs the script once (no mpirun), which would silently train
    with half the global batch: check_launch refuses it."""
    cmd = _accelerate_env(monkeypatch, "--cpu", "--num_processes", "2")
    assert cmd == [sys.executable, "script.py"], "one process, not two"
    with pytest.raises(LaunchError, match="starts only ONE process"):
        check_launch(None)
    _accelerate_env(monkeypatch, "--cpu", "--num_processes", "1")
    check_launch(None)  # a real single CPU process is fine


def test_fp16_on_cpu_is_refused_before_compute(monkeypatch):
    """Accelerate passes --mixed_precision fp16 with --cpu on to the script unchecked; check_launch stops it."""
    _accelerate_env(monkeypatch, "--cpu", "--num_processes", "1", "--mixed_precision", "fp16")
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "fp16"
    with pytest.raises(LaunchError, match="fp16 needs a CUDA GPU"):
        check_launch(None)
    _accelerate_env(monkeypatch, "--cpu", "--num_processes", "1", "--mixed_precision", "bf16")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    check_launch(None)


def test_bf16_on_a_cpu_without_bf16_kernels_is_refused_and_auto_picks_fp32(monkeypatch, capsys):
    """On a CPU without bf16 matrix kernels (AVX2 only) bf16 autocast is ~100x slower than fp32: an explicit bf16
    (argument or `accelerate launch --mixed_precision bf16`) is refused with the fix; ``auto`` picks ``no`` there and
    ``bf16`` where the CPU has the kernels, and says which and why."""
    _accelerate_env(monkeypatch, "--cpu", "--num_processes", "1", "--mixed_precision", "bf16")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(LaunchError, match=r"mixed_precision=bf16 on this CPU .* about 100x slower .* --mixed_precision auto"):
        check_launch(None)
    with pytest.raises(LaunchError, match="no bfloat16 matrix kernels"):
        check_launch("bf16")
    assert loop.resolve_mixed_precision("auto") == "no"
    assert "mixed_precision auto -> no: this CPU" in capsys.readouterr().out
    check_launch(loop.resolve_mixed_precision("auto"))
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.resolve_mixed_precision("auto") == "bf16"
    assert "auto -> bf16: this CPU" in capsys.readouterr().out
    check_launch("bf16")
    monkeypatch.setenv("RANK", "1")  # the other processes of a launch decide alike, silently
    assert loop.resolve_mixed_precision("auto") == "bf16" and capsys.readouterr().out == ""
    for value in ("no", "bf16", "fp16", None):
        assert loop.resolve_mixed_precision(value) == value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors on a machine without CUDA")
def test_torchrun_environment_without_cpu_flag_is_refused(monkeypatch):
    """What each process of ddp.yaml / fsdp.yaml sees here (torchrun's variables, no ACCELERATE_USE_CPU)."""
    for k in list(os.environ):
        if k.startswith(("ACCELERATE_", "FSDP_")) or k in LAUNCH_VARS:
            monkeypatch.delenv(k)
    for k, v in {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "RANK": "3", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
                 "ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "bf16"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(LaunchError, match="asks for 8 GPU processes"):
        check_launch(None)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # cpu.yaml's way: fine (on a CPU with bf16 kernels: it asks for bf16)
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    check_launch(None)


def test_deepspeed_without_deepspeed_is_refused(monkeypatch):
    """accelerate launch itself stops first ("DeepSpeed is not installed"); under torchrun the recipe does."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("deepspeed is installed here; the check is for machines without it")
    for k in list(os.environ):
        if k.startswith(("ACCELERATE_", "FSDP_")) or k in LAUNCH_VARS:
            monkeypatch.delenv(k)
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / "deepspeed_zero2.yaml"), "script.py"])
    with pytest.raises(ImportError, match="DeepSpeed is not installed"):
        launch_command(args)  # raises before it starts anything
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(LaunchError, match="DeepSpeed, which is not installed"):
        check_launch(None)

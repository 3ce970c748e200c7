"""--device, --precision, --offline and the scoring memory plan: checks and refusals."""

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from fanlora.cli.main import main
from fanlora.errors import FanLoRAError
from fanlora.models import loading
from fanlora.score.evaluator import moved
from fanlora.score.memory import GB, cache_bytes, plan_memory
from fanlora.utils.devices import (
    Runtime,
    check_precision,
    end_processes,
    make_accelerator,
    resolve_device,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == CPU
    assert Runtime.of("auto", "bf16").autocast_dtype is torch.bfloat16


@pytest.mark.parametrize(
    ("spec", "message"),
    [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("gpu", "auto, cpu, cuda or cuda:N")],
)
def test_a_device_this_machine_lacks_is_refused(no_gpu, spec, message):
    with pytest.raises(FanLoRAError, match=message):
        resolve_device(spec)


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FanLoRAError, match="1 GPU"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_fp16_on_the_cpu_is_refused_with_the_reason():
    with pytest.raises(FanLoRAError, match="no fp16 loss scaling"):
        check_precision("fp16", CPU)
    check_precision("bf16", CPU)  # this one is offered


def test_autocast_computes_linear_layers_in_bf16_and_fp32_leaves_them():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with Runtime.of("cpu", "bf16").autocast():
        assert layer(x).dtype is torch.bfloat16
    with Runtime.of("cpu", "fp32").autocast():
        assert layer(x).dtype is torch.float32


def test_one_process_may_change_precision_between_accelerators():
    """accelerate refuses a second Accelerator with another mixed precision in a process;
    fanlora resets the single-process state (training fp32 then bf16 in one session)."""
    assert make_accelerator(Runtime.of("cpu", "fp32")).mixed_precision == "no"
    assert make_accelerator(Runtime.of("cpu", "bf16")).mixed_precision == "bf16"
    assert make_accelerator(Runtime.of("cpu", "fp32")).mixed_precision == "no"


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--device", "cuda"],
        ["train", "--precision", "fp16"],
        ["score", "--adapter", "x", "--device", "cuda:0"],
        ["eval", "--device", "cuda"],
        ["run", "--device", "cuda"],
        ["run", "--precision", "fp16"],
    ],
)
def test_a_refused_device_or_precision_creates_nothing(no_gpu, tmp_path, capsys, command):
    out = tmp_path / "out"
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err or "fp16 is refused" in err, err
    assert not out.exists()


def test_the_layer_cache_of_a_7b_model_is_17_gb_in_fp32():
    """2 x 32 layers x (64 x 256) tokens x 4096 hidden x 4 bytes (the issue's figure)."""
    assert cache_bytes(32, 64 * 256, 4096, 4) / GB == pytest.approx(17.18, abs=0.01)
    assert cache_bytes(32, 64 * 256, 4096, 2) * 2 == cache_bytes(32, 64 * 256, 4096, 4)


def test_the_plan_keeps_the_cache_on_the_device_when_it_fits():
    plan = plan_memory(
        CUDA, weights=14 * GB, cache=17 * GB, device_free=79 * GB, host_free=100 * GB
    )
    assert plan.cache_on == "device" and plan.store(CUDA) is None
    assert "cache 17.00 GB in cuda memory" in plan.describe()


def test_the_plan_offloads_the_cache_when_the_device_is_short():
    plan = plan_memory(
        CUDA, weights=14 * GB, cache=17 * GB, device_free=24 * GB, host_free=100 * GB
    )
    assert plan.cache_on == "cpu" and plan.store(CUDA) == CPU
    assert "CPU memory (offloaded)" in plan.describe()


def test_a_model_larger_than_the_device_needs_a_device_map():
    with pytest.raises(FanLoRAError, match="--device-map auto"):
        plan_memory(CUDA, weights=28 * GB, cache=GB, device_free=24 * GB, host_free=100 * GB)
    plan = plan_memory(CUDA, 28 * GB, GB, 24 * GB, 100 * GB, device_map="auto")
    assert plan.cache_on == "cpu"


def test_a_cache_that_fits_nowhere_is_refused_with_what_to_lower():
    with pytest.raises(FanLoRAError, match="--val-examples"):
        plan_memory(CPU, weights=GB, cache=30 * GB, device_free=20 * GB, host_free=20 * GB)


def test_moved_copies_a_shared_tensor_once():
    shared = torch.ones(3, dtype=torch.float32)
    memo: dict = {}
    first = moved({"mask": shared, "pos": (shared, 2)}, torch.device("meta"), memo)
    second = moved({"mask": shared}, torch.device("meta"), memo)
    assert first["mask"] is first["pos"][0] is second["mask"]
    assert first["mask"].device.type == "meta" and first["pos"][1] == 2
    assert moved(shared, None, memo) is shared  # no store: left where it is


def test_an_offline_hub_id_missing_from_the_cache_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FanLoRAError, match="hf download org/model"):
        loading.resolve_model("org/model")


def test_an_online_hub_id_downloads_like_transformers(monkeypatch, tmp_path):
    calls = []

    def snapshot(name, local_files_only=False, allow_patterns=None):
        calls.append(local_files_only)
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        (tmp_path / "config.json").write_text("{}")
        return str(tmp_path)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loading, "snapshot_download", snapshot)
    assert loading.resolve_model("org/model") == tmp_path
    assert calls == [True, False]  # the cache first, then the download


def test_an_unknown_hub_id_online_is_named(monkeypatch):
    def snapshot(name, local_files_only=False, allow_patterns=None):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # no HTTP response
        Exception.__init__(missing, "404")
        raise missing

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loading, "snapshot_download", snapshot)
    with pytest.raises(FanLoRAError, match="Hub has no model 'org/none'"):
        loading.resolve_model("org/none")


def test_the_offline_flag_forbids_a_download_and_creates_nothing(monkeypatch, tmp_path, capsys):
    def snapshot(name, local_files_only=False, allow_patterns=None):
        assert local_files_only, "--offline must never download"
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loading, "snapshot_download", snapshot)
    out = tmp_path / "out"
    assert main(["train", "--model", "org/model", "--offline", "--out", str(out)]) == 2
    assert "downloads are off" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(
    monkeypatch, native, expected
):
    from fanlora.utils import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert Runtime.of("cpu", "auto").precision == expected


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_emulated(monkeypatch):
    from fanlora.utils import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        assert Runtime.of("cpu", "bf16").precision == "bf16"


def test_the_gpu_benchmark_runs_its_code_on_a_tiny_shape_on_the_cpu(monkeypatch, tmp_path):
    """bench/gpu.py cannot be measured without a GPU; its code runs here on a tiny shape:
    engine against bare PEFT, scoring every module, table 3's variants."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu

    out = tmp_path / "gpu.json"
    argv = ["gpu.py", "--shapes", "tiny", "--device", "cpu", "--precision", "fp32"]
    argv += ["--train-steps", "1", "--val-examples", "8", "--decode-runs", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    gpu.main()
    tiny = json.loads(out.read_text())["shapes"]["tiny"]
    assert tiny["train"]["engine_over_bare"] > 0
    assert tiny["score"]["modules"] == 2 * 7 and tiny["score"]["validation_tokens"] == 8 * 256
    variants = {(r["variant"], r["beams"]) for r in tiny["decode"]["rows"]}
    assert variants == {
        (v, b) for v in ("base", "fanlora", "lora", "adalora", "ia3") for b in (1, 3)
    }


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_launches_are_refused_and_ddp_is_not(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from fanlora.utils.devices import check_distributed

    with pytest.raises(FanLoRAError, match="supports one process or DDP"):
        check_distributed(SimpleNamespace(distributed_type=DistributedType[kind]))
    for fine in ("NO", "MULTI_CPU", "MULTI_GPU"):
        check_distributed(SimpleNamespace(distributed_type=DistributedType[fine]))


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as torchrun's ranks hold one (destroyed after the test)."""
    store = f"file://{tmp_path / 'store'}"
    torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_finished_command_destroys_the_process_group(process_group, capsys):
    # left to interpreter exit, gloo's threads can abort a rank after its work is done
    assert main(["modules", "--model", "tiny-random-llama"]) == 0
    assert not torch.distributed.is_initialized()
    end_processes()  # nothing left to destroy, as with one process: no error


def test_a_failed_command_leaves_the_process_group(process_group, capsys):
    # a rank still in a collective would make the destroy hang: errors exit as they are
    assert main(["modules", "--model", "nobody/no-such-model"]) == 2
    assert torch.distributed.is_initialized()

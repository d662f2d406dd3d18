"""What the GPU path relies on, tested where it can be: stacked members compiled once per
architecture (not once per batch) in the mode trainer.compile names, with padded evaluation
batches shared among the members; the BatchNorm guard idle while Dynamo traces and active in
eager; crops and flips over all members at once drawing what separate runs draw; balanced GPU
placement with set_device. The CPU tests run everywhere (Dynamo with a counting or aot_eager
backend); the CUDA tests (inductor, CUDA graphs, cuDNN) skip without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src.data.crop_flip import augment
from src.training import device as device_mod
from src.training import model_cache
from src.training.device import Execution, pick_gpu, resolve_device, resolve_execution
from src.training.model_cache import fresh_model
from src.training.trainer import SingleTrainer, StackedTrainer, guard_batch_norm, stacked_augment
from tests.conftest import CountingBackend
from tests.test_fastpath import TRAINER, assert_close, tiny_data

CPU = Execution(torch.device("cpu"), None, channels_last=False)
CNN = {"name": "cnn", "channels": [4, 8], "dropout": 0.0}
AUG = {"mixup_alpha": 0.4, "smoothing": 0.1}
SEEDS = [0, 3, 7]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def states(gens: list[torch.Generator]) -> list[torch.Tensor]:
    return [g.get_state() for g in gens]


@pytest.mark.parametrize("padding,hflip", [(2, True), (0, True), (3, False)])
def test_stacked_crops_and_flips_equal_each_members_own_draws(padding, hflip):
    x = torch.randint(0, 256, (3, 10, 3, 8, 8), dtype=torch.uint8)
    loop_gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    want = torch.stack([augment(x[k], padding, hflip, g) for k, g in enumerate(loop_gens)])
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    got = stacked_augment(x, padding, hflip, gens)
    assert torch.equal(got, want)
    # The generators end where the separate runs' end: every later draw matches too.
    assert all(torch.equal(a, b) for a, b in zip(states(gens), states(loop_gens)))


def test_compiled_stacked_calls_are_built_once_for_every_batch_of_a_sweep(compile_with):
    """A second StackedTrainer of the same architecture (the batched launcher's next batch)
    gets the same compiled calls: no new graph for training or for padded evaluation."""
    counter = CountingBackend()
    compile_with(counter)
    data = tiny_data(n=64)
    cfg = {**TRAINER, "compile": True, "eval_batch_size": 27}  # 9 images a member per forward
    trainers = []
    for seeds in (SEEDS, [1, 2, 4]):
        tr = StackedTrainer(CNN, (3, 8, 8), data, cfg, AUG, CPU, seeds)
        trainers.append(tr)
        tr.train_epoch()
        assert tr.predict(data.test.x).shape == (3, 40, 4)  # 9 x 4 + 4 (padded)
        assert tr.predict(data.train.x).shape == (3, 64, 4)  # 9 x 7 + 1 (padded)
    assert trainers[0].calls is trainers[1].calls
    assert counter.graphs == 2  # one training graph, one evaluation graph, for both batches


def test_compiled_stacked_members_match_eager(compile_with):
    compile_with("aot_eager")
    data = tiny_data()
    out = []
    for compile_ in (False, True):
        tr = StackedTrainer(CNN, (3, 8, 8), data, {**TRAINER, "compile": compile_}, AUG, CPU,
                            SEEDS)
        losses = [s.loss for s in tr.train_epoch()]
        out.append((losses, {k: v.detach().clone() for k, v in tr.params.items()},
                    tr.predict(data.test.x)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][2], out[1][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("setting,device,mode", [
    ("max-autotune-no-cudagraphs", "cpu", "max-autotune-no-cudagraphs"),
    (True, "cpu", "default"),
])
def test_stacked_members_compile_in_the_named_mode(monkeypatch, setting, device, mode):
    seen = []

    def fake_compile(fn, **options):
        seen.append(options.get("mode"))
        return fn

    model_cache.clear()
    monkeypatch.setattr(model_cache.torch, "compile", fake_compile)
    ex = Execution(torch.device(device), None, channels_last=False)
    StackedTrainer(CNN, (3, 8, 8), tiny_data(), {**TRAINER, "compile": setting}, AUG, ex, SEEDS)
    model_cache.clear()
    assert seen and set(seen) == {mode}


def test_stacked_evaluation_shares_the_eval_batch_among_members():
    """The vmapped evaluation (compiled, or on a GPU) shares eval_batch_size among members."""
    data = tiny_data()
    tr = StackedTrainer(CNN, (3, 8, 8), data, {**TRAINER, "eval_batch_size": 24}, AUG, CPU,
                        SEEDS)
    whole = StackedTrainer(CNN, (3, 8, 8), data, {**TRAINER, "eval_batch_size": 4096}, AUG,
                           CPU, SEEDS)
    tr.member_by_member = whole.member_by_member = False  # as compiled or on a GPU
    sizes = []
    eval_call = tr.calls.eval
    tr.calls.eval = lambda p, b, x: (sizes.append(len(x)), eval_call(p, b, x))[1]
    got = tr.predict(data.test.x)
    assert sizes == [8] * 5  # 24 images per forward in all: 8 for each of the 3 members
    torch.testing.assert_close(got, whole.predict(data.test.x), rtol=1e-5, atol=1e-6)
    # The vmapped call gives each member's own logits: those it gives evaluated alone.
    whole.member_by_member = True
    torch.testing.assert_close(got, whole.predict(data.test.x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [CNN, {"name": "mlp", "hidden_sizes": [16], "dropout": 0.0}])
def test_stacked_members_evaluate_on_a_cpu_as_their_separate_runs_bit_for_bit(model):
    """Eager on a CPU each member evaluates alone, eval_batch_size images per forward: its
    logits are exactly those of its own model with its weights (SingleTrainer.predict)."""
    data = tiny_data()
    cfg = {**TRAINER, "eval_batch_size": 16}
    tr = StackedTrainer(model, (3, 8, 8), data, cfg, AUG, CPU, SEEDS)
    assert tr.member_by_member
    tr.train_epoch()  # BatchNorm's running statistics move off their initial values
    sizes = []
    hook = tr.base.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    got = tr.predict(data.test.x)
    hook.remove()
    assert sizes == [16, 16, 8] * len(SEEDS)  # 40 images, as a separate run cuts them
    for k, seed in enumerate(SEEDS):
        single = SingleTrainer(fresh_model(model, (3, 8, 8), data.num_classes, CPU, seed),
                               data, cfg, AUG, CPU, seed)
        single.model.load_state_dict(tr.member_state_dict(k))
        assert torch.equal(got[k], single.predict(data.test.x)[0])


class TwoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_batch_norm_guard_runs_in_eager_and_is_idle_while_dynamo_traces(compile_with):
    model = TwoBN()
    guard_batch_norm(model)
    seen = []
    model.bn.register_forward_pre_hook(lambda m, a: seen.append(
        (torch.backends.cudnn.enabled, a[0].dtype)))
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    # In eager: cuDNN off around BatchNorm, fp32 input, the flag restored after.
    assert seen == [(False, torch.float32)] and torch.backends.cudnn.enabled
    traced = TwoBN()
    guard_batch_norm(traced)
    counter = CountingBackend()
    compile_with(counter)
    torch._dynamo.utils.counters.clear()
    out = model_cache.compile_fn(traced, "default")(x)
    assert counter.graphs == 1 and not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(out, traced(x))
    assert torch.backends.cudnn.enabled


# ------------------------------------------------------------- several GPUs


def test_least_held_gpu_is_picked_and_ties_spread_by_job_number():
    assert pick_gpu([0, 0, 0], job=4) == 1
    assert pick_gpu([2, 1, 1], job=0) == 1 and pick_gpu([2, 1, 1], job=1) == 2
    assert pick_gpu([1, 3, 0], job=7) == 2


def test_a_parallel_worker_keeps_the_gpu_it_took(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device_mod, "GPU_CLAIMS", tmp_path)
    monkeypatch.setattr(device_mod, "_process_gpu", None)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "1").write_text("")  # pid 1 (init) holds GPU 0: always alive
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "999999999").write_text("")  # a dead process: a stale claim
    first = resolve_device("auto", spread=4)
    assert first == torch.device("cuda", 1)  # the stale claim is no load
    assert device_mod.gpu_loads(2) == [1, 1]  # this process's claim now counts
    assert resolve_device("auto", spread=5) == first  # the next job of this worker: same GPU
    assert resolve_device("auto") == torch.device("cuda", 0)  # sequential: GPU 0


@GPU
def test_the_chosen_gpu_is_the_current_device():
    n = torch.cuda.device_count()
    ex = resolve_execution({"device": f"cuda:{n - 1}", "channels_last": "auto", "amp": "auto"})
    assert torch.cuda.current_device() == n - 1 == ex.device.index
    torch.cuda.set_device(0)


# ------------------------------------------------------------- CUDA


def stacked_and_separate(execution: Execution, cfg: dict, data) -> tuple:
    multi = StackedTrainer(CNN, (3, 8, 8), data, cfg, AUG, execution, SEEDS)
    single = [SingleTrainer(model_cache.fresh_model(CNN, (3, 8, 8), 4, execution, s), data,
                            {**cfg, "compile": False}, AUG, execution, s) for s in SEEDS]
    return multi, single


@GPU
@pytest.mark.parametrize("setting", [True, "default"])  # CUDA graphs, and inductor without
def test_compiled_stacked_members_on_cuda_match_separate_eager_runs(setting):
    """Inductor (and CUDA graphs where the mode has them) over vmapped members, bf16: an
    epoch's losses and the predictions of the separate eager runs to bf16 precision, an
    evaluation of several padded batches kept batch by batch, and the next batch of a sweep
    reusing the compiled calls."""
    model_cache.clear()
    torch._dynamo.reset()
    gpu = Execution(torch.device("cuda"), torch.bfloat16, channels_last=False)
    data = tiny_data("cuda", n=80)
    cfg = {**TRAINER, "compile": setting, "eval_batch_size": 27}
    multi, single = stacked_and_separate(gpu, cfg, data)
    got, want = multi.train_epoch(), [t.train_epoch()[0] for t in single]
    for b, s in zip(got, want):
        assert b.finite and b.loss == pytest.approx(s.loss, rel=2e-2)
    preds = multi.predict(data.train.x)
    for k, t in enumerate(single):
        torch.testing.assert_close(preds[k], t.predict(data.train.x)[0], rtol=5e-2, atol=5e-2)
    again = StackedTrainer(CNN, (3, 8, 8), data, cfg, AUG, gpu, [1, 2, 4])
    assert again.calls is multi.calls
    model_cache.clear()
    torch._dynamo.reset()


@GPU
def test_stacked_batch_norm_under_an_eager_fallback_of_compile_trains_on_cuda(monkeypatch):
    """Where Dynamo gives up and runs the vmapped call eagerly, the BatchNorm guard is what
    keeps cuDNN's batch norm away from vmap: training must still run under bf16."""
    def failing_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model_cache.clear()
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", True)
    monkeypatch.setitem(model_cache.COMPILE_OPTIONS, "backend", failing_backend)
    gpu = Execution(torch.device("cuda"), torch.bfloat16, channels_last=False)
    data = tiny_data("cuda")
    multi, single = stacked_and_separate(gpu, {**TRAINER, "compile": True}, data)
    got, want = multi.train_epoch(), [t.train_epoch()[0] for t in single]
    for b, s in zip(got, want):
        assert b.finite and b.loss == pytest.approx(s.loss, rel=3e-2)
    model_cache.clear()
    torch._dynamo.reset()


@GPU
def test_fp32_compiled_stacked_evaluation_keeps_every_batch():
    """trainer.amp=off with CUDA graphs: each batch is copied out of the graph's buffer."""
    model_cache.clear()
    torch._dynamo.reset()
    gpu = Execution(torch.device("cuda"), None, channels_last=False)
    data = tiny_data("cuda")
    preds = []
    for setting in (False, "reduce-overhead"):
        tr = StackedTrainer(CNN, (3, 8, 8), data,
                            {**TRAINER, "compile": setting, "eval_batch_size": 24}, AUG, gpu,
                            SEEDS)
        preds.append(tr.predict(data.test.x))
    torch.testing.assert_close(preds[0], preds[1], rtol=1e-3, atol=1e-3)
    model_cache.clear()
    torch._dynamo.reset()

"""The fast path computes what the plain path computes: Trainer step vs a hand-written step,
channels-last vs not, fused optimizer with a tensor lr vs foreach with a float, compiled vs
eager (Dynamo + AOTAutograd on CPU; inductor only on request), no recompiles when lambda, eps,
lr, the eval batch or the run change, and the model cache's re-initialisation vs a fresh build.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from src.data.tensors import Split, TrainData
from src.training import model_cache
from src.training.device import Execution
from src.training.optim import build_optimizer
from src.training.trainer import Batch, SingleTrainer
from tests.conftest import CountingBackend

CPU = Execution(torch.device("cpu"), None, channels_last=False)
CNN = {"name": "cnn", "channels": [4, 8], "dropout": 0.0}
TRAINER = {"batch_size": 16, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine", "epochs": 3, "eval_batch_size": 24}


def tiny_data(device: torch.device | str = "cpu", n: int = 64,
              shape: tuple[int, int, int] = (3, 8, 8), k: int = 4, crop: int = 2) -> TrainData:
    """Random uint8 images with crop and flip, so every part of the step runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, k, (n,), generator=g).to(device)
    c = shape[0]
    return TrainData(Split(x, y), Split(x[:40], y[:40]), y, None,
                     torch.full((1, c, 1, 1), 0.5, device=device),
                     torch.full((1, c, 1, 1), 0.25, device=device), k,
                     crop_padding=crop, hflip=True)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), msg=k, **tol)


def test_trainer_step_equals_a_hand_written_plain_step():
    data = tiny_data()
    model = model_cache.fresh_model(CNN, (3, 8, 8), 4, CPU, seed=0)
    plain = copy.deepcopy(model)
    tr = SingleTrainer(model, data, TRAINER, {"mixup_alpha": 1.0, "smoothing": 0.1}, CPU, seed=0)
    x = tr.normalise(data.train.x[:16])
    y, y2, lam = data.train.y[:16], data.train.y[16:32], torch.tensor(0.3)
    loss, _ = tr.step(Batch(x, y, y2, lam))
    # The textbook form: lam * CE_eps(y) + (1 - lam) * CE_eps(y2), plain SGD.
    opt = torch.optim.SGD([{"params": [p for p in plain.parameters() if p.ndim > 1],
                            "weight_decay": 5e-4},
                           {"params": [p for p in plain.parameters() if p.ndim <= 1],
                            "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=True)
    out = plain(x)
    ref = (0.3 * F.cross_entropy(out, y, label_smoothing=0.1)
           + 0.7 * F.cross_entropy(out, y2, label_smoothing=0.1))
    ref.backward()
    opt.step()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    assert_close(params_of(model), params_of(plain), rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_loss_and_gradients():
    x = tiny_data().train.x[:16].float() / 255
    y = torch.arange(16) % 4
    grads = []
    for cl in (False, True):
        ex = Execution(torch.device("cpu"), None, channels_last=cl)
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, ex, seed=0)
        xin = x.contiguous(memory_format=torch.channels_last) if cl else x
        F.cross_entropy(model(xin), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_with_tensor_lr_follows_the_float_lr_path(optimizer):
    """The CUDA path's optimizer (fused, lr a tensor updated in place) on CPU."""
    data, cfg = tiny_data(), {**TRAINER, "optimizer": optimizer, "lr": 0.01}
    runs = []
    for fused in (False, True):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, CPU, seed=0)
        tr = SingleTrainer(model, data, cfg, {"mixup_alpha": 0.4, "smoothing": 0.1}, CPU, seed=0)
        tr.optim.optimizer = build_optimizer([p for p in model.parameters() if p.ndim > 1],
                                             [p for p in model.parameters() if p.ndim <= 1],
                                             cfg, CPU.device, fused=fused)
        tr.optim.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optim.optimizer,
                                                               lambda s: 0.5 ** s)
        tr.train_epoch()
        runs.append((params_of(model), tr.optim.optimizer.param_groups[0]["lr"]))
    assert torch.is_tensor(runs[1][1]) and runs[1][1].dtype == torch.float64
    assert float(runs[1][1]) == runs[0][1]  # the same schedule values, exactly
    assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)


def test_no_recompile_when_lambda_eps_lr_eval_batch_or_run_change(compile_with):
    counter = CountingBackend()
    compile_with(counter)
    data, cfg = tiny_data(n=80), {**TRAINER, "compile": True}
    models = []
    for seed, (alpha, eps, lr) in enumerate([(1.0, 0.1, 0.1), (0.2, 0.3, 0.02)]):
        model = model_cache.get_model(CNN, (3, 8, 8), 4, CPU, seed, reuse=True)
        models.append(model)
        tr = SingleTrainer(model, data, {**cfg, "lr": lr},
                     {"mixup_alpha": alpha, "smoothing": eps}, CPU, seed)
        for _ in range(2):  # lambdas and the cosine lr change at every step
            tr.train_epoch()
            tr.predict(data.test.x)  # 40 images: one padded eval batch of 24 + 16
            tr.predict(data.train.x)  # 80 images: 24, 24, 24, 8 (padded)
    assert models[0] is models[1]  # the second run got the cached object back
    assert counter.graphs == 2  # one training graph, one evaluation graph, for both runs


def test_compiled_training_and_evaluation_match_eager(compile_with):
    compile_with("aot_eager")  # Dynamo + AOTAutograd; inductor's codegen: see the next test
    data = tiny_data()
    out = []
    for compile_ in (False, True):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, CPU, seed=0)
        tr = SingleTrainer(model, data, {**TRAINER, "compile": compile_},
                     {"mixup_alpha": 1.0, "smoothing": 0.1}, CPU, seed=0)
        stats = tr.train_epoch()[0]
        out.append((stats.loss, params_of(model), tr.predict(data.test.x)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][2], out[1][2], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not os.environ.get("LSMIX_TEST_INDUCTOR"),
                    reason="inductor's C++ codegen takes ~25 s on a 2-core CPU; "
                           "set LSMIX_TEST_INDUCTOR=1 to run it")
def test_inductor_forward_and_backward_match_eager(compile_with):
    compile_with("inductor")
    x, y = tiny_data().train.x[:16].float() / 255, torch.arange(16) % 4
    grads = []
    for compile_ in (False, True):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, CPU, seed=0)
        fwd = model_cache.compiled(model) if compile_ else model
        F.cross_entropy(fwd(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cfg,shape", [
    (CNN, (3, 8, 8)),
    ({"name": "wide_resnet", "depth": 10, "widen_factor": 1, "dropout": 0.0}, (3, 8, 8)),
])
def test_cached_model_reinitialised_equals_a_fresh_build(cfg, shape):
    model_cache.clear()
    first = model_cache.get_model(cfg, shape, 4, CPU, seed=0, reuse=True)
    tr = SingleTrainer(first, tiny_data(shape=shape), TRAINER,
                       {"mixup_alpha": 0.0, "smoothing": 0.0},
                       CPU, seed=0)
    tr.train_epoch()  # weights, BN statistics, gradients and mode all move away
    tr.predict(tr.data.test.x)
    again = model_cache.get_model(cfg, shape, 4, CPU, seed=1, reuse=True)
    after_reuse = torch.rand(3)  # the global generator where the re-init left it
    fresh = model_cache.fresh_model(cfg, shape, 4, CPU, seed=1)
    after_fresh = torch.rand(3)
    assert again is first and again.training
    assert all(p.grad is None for p in again.parameters())
    assert_close(params_of(again), params_of(fresh), rtol=0, atol=0)  # bit-identical
    assert torch.equal(after_reuse, after_fresh)
    model_cache.clear()


def test_compile_setting_names_a_mode():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model_cache.compile_mode(False, cuda) is None
    assert model_cache.compile_mode(True, cpu) == "default"
    assert model_cache.compile_mode(True, cuda) == "reduce-overhead"  # CUDA graphs
    assert model_cache.compile_mode("max-autotune", cpu) == "max-autotune"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_training_and_evaluation_match_eager():
    """trainer.compile=true on a GPU (inductor + CUDA graphs, bf16): the same losses, weights
    and predictions as the eager path, to bf16 precision, over steps whose lambda and lr
    change, then evaluation with a padded last batch."""
    model_cache.clear()
    torch._dynamo.reset()
    gpu = Execution(torch.device("cuda"), torch.bfloat16, channels_last=True)
    data = tiny_data("cuda")
    out = []
    for compile_ in (False, True):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, gpu, seed=0)
        tr = SingleTrainer(model, data, {**TRAINER, "compile": compile_},
                     {"mixup_alpha": 1.0, "smoothing": 0.1}, gpu, seed=0)
        assert tr.cuda_graphs == compile_
        losses = [tr.train_epoch()[0].loss for _ in range(2)]
        out.append((losses, params_of(model), tr.predict(data.test.x)))
    assert out[0][0] == pytest.approx(out[1][0], rel=2e-2)
    assert_close(out[0][1], out[1][1], rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(out[0][2], out[1][2], rtol=5e-2, atol=5e-2)
    model_cache.clear()
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_fp32_cuda_graph_evaluation_of_several_batches_keeps_every_batch():
    """trainer.amp=off under CUDA graphs: each evaluation batch is copied out of the graph's
    output buffer (under fp32 .float() is that buffer itself, which the next replay
    overwrites), so a split of several batches predicts as the eager model does."""
    model_cache.clear()
    torch._dynamo.reset()
    gpu = Execution(torch.device("cuda"), None, channels_last=False)
    data = tiny_data("cuda")
    preds = []
    for compile_ in (False, "reduce-overhead"):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, gpu, seed=0)
        tr = SingleTrainer(model, data, {**TRAINER, "compile": compile_, "eval_batch_size": 8},
                           {"mixup_alpha": 0.0, "smoothing": 0.0}, gpu, seed=0)
        preds.append(tr.predict(data.test.x))
    assert len(data.test.x) > 8  # several evaluation batches
    torch.testing.assert_close(preds[0], preds[1], rtol=1e-3, atol=1e-3)
    model_cache.clear()
    torch._dynamo.reset()


def test_decay_all_puts_every_parameter_under_weight_decay():
    """trainer=cifar decays biases and norm weights too, as the Mixup paper's code does."""
    data = tiny_data()
    for decay_all, exempt in ((False, True), (True, False)):
        model = model_cache.fresh_model(CNN, (3, 8, 8), 4, CPU, seed=0)
        tr = SingleTrainer(model, data, {**TRAINER, "decay_all": decay_all},
                           {"mixup_alpha": 0.0, "smoothing": 0.0}, CPU, seed=0)
        groups = tr.optim.optimizer.param_groups
        n_params = len(list(model.parameters()))
        assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_params
        assert (len(groups[1]["params"]) > 0) == exempt and groups[1]["weight_decay"] == 0.0
